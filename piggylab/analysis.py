"""Tables about trained tasks: per-layer sparsity and storage per task (paper §5), the bytes
each task holds in memory, and how the tasks' masks overlap.

Everything here returns pandas DataFrames (or `MaskOverlap`, a few of them); drawing them is
`piggylab.plots`' job.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from .piggyback import PiggybackNet
from .storage import task_bytes

SPARSITY_COLUMNS = ["layer", "depth", "kind", "weights", "zeros", "sparsity"]


def _layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "depthwise conv" if module.groups > 1 and module.groups == module.in_channels else "conv"
    return "attention" if isinstance(module, nn.MultiheadAttention) else "linear"


def layer_sparsity(net: PiggybackNet, task: str) -> pd.DataFrame:
    """One row per masked layer, in forward order: how many of its mask entries are 0.

    Paper §5: the fraction of zeros grows with the task's distance from the backbone's
    domain, and changes grow with depth.
    """
    rows = []
    for depth, (layer, mask) in enumerate(net.masks(task).items()):
        wrapper, _ = net.masked_layers[layer]
        zeros = mask.numel() - int(mask.count_nonzero())
        rows.append({"layer": layer, "depth": depth, "kind": _layer_kind(wrapper.base_layer), "weights": mask.numel(),
                     "zeros": zeros, "sparsity": zeros / mask.numel()})
    return pd.DataFrame(rows, columns=SPARSITY_COLUMNS)


def depth_thirds(layers: pd.DataFrame) -> tuple[float, float]:
    """Mean sparsity of the first and of the last third of the masked layers (`layer_sparsity`'s
    rows, in forward order): paper §5 and Fig. 3 find that the number of changes grows with depth."""
    third = max(1, len(layers) // 3)
    return float(layers["sparsity"].iloc[:third].mean()), float(layers["sparsity"].iloc[-third:].mean())


def overall_sparsity(net: PiggybackNet, task: str) -> float:
    """Fraction of all the task's mask entries that are 0."""
    table = layer_sparsity(net, task)
    return float(table["zeros"].sum() / table["weights"].sum())


def sparsity_by_task(net: PiggybackNet, tasks: list[str] | None = None) -> pd.DataFrame:
    """Per-layer sparsity of several tasks, stacked with a `task` column (for heatmaps)."""
    tasks = list(net.tasks) if tasks is None else tasks
    return pd.concat([layer_sparsity(net, t).assign(task=t) for t in tasks], ignore_index=True)


def finetuned_bytes(net: PiggybackNet, task: str) -> int:
    """Bytes of a float32 fine-tuned copy of the whole network for `task` (the baseline)."""
    return _float32_backbone_bytes(net) + _float32_head_bytes(net, task)


def _float32_backbone_bytes(net: PiggybackNet) -> int:
    return 4 * sum(t.numel() for t in net.backbone_state().values() if t.is_floating_point())


def _float32_head_bytes(net: PiggybackNet, task: str) -> int:
    return 4 * sum(p.numel() for p in net.heads.heads[task].parameters())


def storage_table(net: PiggybackNet, tasks: list[str] | None = None) -> pd.DataFrame:
    """Bytes per task: packed and entropy-coded task files versus a fine-tuned network copy."""
    rows = []
    for task in list(net.tasks) if tasks is None else tasks:
        head = sum(4 * v.numel() for k, v in net.task_state(task).items() if k.startswith("head."))
        bn = sum(4 * v.numel() for k, v in net.task_state(task).items() if k.startswith("bn."))
        packed, rice = len(task_bytes(net, task, "packed")), len(task_bytes(net, task, "rice"))
        finetuned = finetuned_bytes(net, task)
        rows.append({"task": task, "mask_kind": net.tasks[task].mask.kind, "sparsity": overall_sparsity(net, task),
                     "head_bytes": head, "bn_bytes": bn, "packed_bytes": packed, "rice_bytes": rice,
                     "finetuned_bytes": finetuned, "packed_vs_finetuned": packed / finetuned,
                     "rice_bits_per_weight": 8 * (rice - head - bn) / net.num_masked_weights})
    return pd.DataFrame(rows)


# -- memory ---------------------------------------------------------------------------------------
MEMORY_COLUMNS = ["task", "frozen", "mask_bytes", "scores_bytes", "head_bytes", "bn_bytes", "total_bytes",
                  "mask_bits_per_weight"]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def task_memory(net: PiggybackNet, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Bytes each task holds in memory, one row per task: its packed masks (a frozen task:
    1 bit per masked weight, 2 for ternary, plus at most a padding byte per layer), its scores
    (a task still in training: 4 bytes per weight), its head and its batchnorm copy.
    The backbone and the active task's merged weights are shared (`shared_memory`)."""
    rows = []
    layers = [masks for _, masks, _ in net.masked_weights()]
    weights = net.num_masked_weights
    for task in list(net.tasks) if tasks is None else tasks:
        info = net.check_task(task)
        mask = _nbytes(m.packed[task] for m in layers if task in m.packed)
        scores = _nbytes(m.scores[task] for m in layers if task in m.scores)
        state = net.task_state(task)
        head = _nbytes(v for k, v in state.items() if k.startswith("head."))
        bn = _nbytes(v for k, v in state.items() if k.startswith("bn."))
        rows.append({"task": task, "frozen": info.frozen, "mask_bytes": mask, "scores_bytes": scores,
                     "head_bytes": head, "bn_bytes": bn, "total_bytes": mask + scores + head + bn,
                     "mask_bits_per_weight": 8 * mask / weights})
    return pd.DataFrame(rows, columns=MEMORY_COLUMNS)


def shared_memory(net: PiggybackNet) -> dict[str, int]:
    """Bytes every task shares: the frozen backbone (``backbone``) and the active frozen task's
    merged weights ``W * mask`` (``merged``; none while no frozen task is active)."""
    merged = [masks.merged for _, masks, _ in net.masked_weights() if getattr(masks, "merged", None) is not None]
    return {"backbone": _nbytes(net.backbone_state().values()), "merged": _nbytes(merged)}


PIGGYBACK_MEMORY = "piggyback: one backbone + frozen tasks"
FINETUNED_MEMORY = "one fine-tuned network per task"


def memory_totals(net: PiggybackNet, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Bytes in memory holding the first k of `tasks` (default: all the network's), for k = 1,
    10, 100, ... and all of them: piggyback (what the tasks share, `shared_memory`, once, plus
    each task's `task_memory`) against one float32 fine-tuned copy of the network per task
    (`finetuned_bytes`). Columns: tasks, approach (`PIGGYBACK_MEMORY`, `FINETUNED_MEMORY`), bytes."""
    memory = task_memory(net, tasks)
    held = memory["total_bytes"].cumsum().tolist()
    backbone = _float32_backbone_bytes(net)  # once: each task's copy differs only by its head (`finetuned_bytes`)
    copies = list(itertools.accumulate(backbone + _float32_head_bytes(net, task) for task in memory["task"]))
    shared = sum(shared_memory(net).values())
    counts = sorted({10**i for i in range(len(str(len(held))))} | {len(held)}) if held else []
    rows = [row for k in counts for row in ({"tasks": k, "approach": PIGGYBACK_MEMORY, "bytes": shared + held[k - 1]},
                                            {"tasks": k, "approach": FINETUNED_MEMORY, "bytes": copies[k - 1]})]
    return pd.DataFrame(rows, columns=["tasks", "approach", "bytes"])


# -- mask overlap -----------------------------------------------------------------------------------
OVERLAP_COLUMNS = ["task_a", "task_b", "layer", "depth", "weights", "off_a", "off_b", "off_both", "off_either",
                   "jaccard", "chance"]
COMMON_COLUMNS = ["layer", "depth", "weights", "off_every", "off_every_fraction"]
OVERALL = "overall"
"""The `layer` of the rows that sum every masked layer."""


@dataclass(frozen=True)
class MaskOverlap:
    """How the tasks' switched-off weights (mask entries 0) overlap (`mask_overlap`).

    - `pairs`: per pair of tasks (``task_a`` before ``task_b`` in `tasks`) and per masked layer
      in forward order, then summed over every layer (``layer == "overall"``, depth -1): the
      weights each switches off, both, either, their Jaccard index ``off_both / off_either``
      (NaN where neither switches one off), and ``chance``, the Jaccard index expected if each
      task's zeros fell at random within each layer (same counts, independent).
    - `common`: per layer, then overall: the weights that every task switches off.
    """

    tasks: list[str]
    pairs: pd.DataFrame
    common: pd.DataFrame

    def matrix(self, layer: str = OVERALL, value: str = "jaccard") -> pd.DataFrame:
        """Task x task table of `value` (``jaccard`` or ``chance``) for one layer (default:
        overall), symmetric; the diagonal is 1 (NaN for a task that switches nothing off there)."""
        rows = self.pairs[self.pairs["layer"] == layer]
        grid = pd.DataFrame(float("nan"), index=self.tasks, columns=self.tasks)
        for r in rows.itertuples():
            grid.loc[r.task_a, r.task_b] = grid.loc[r.task_b, r.task_a] = getattr(r, value)
        for task in self.tasks:
            own = rows[rows["task_a"] == task]["off_a"].tolist() + rows[rows["task_b"] == task]["off_b"].tolist()
            grid.loc[task, task] = 1.0 if own and own[0] > 0 else float("nan")
        return grid

    def between(self, first: Sequence[str], second: Sequence[str]) -> tuple[float, float, int]:
        """Mean overall Jaccard index and mean chance over the pairs with one task in `first`
        and the other in `second` (the pairs within one group when both are the same), and how
        many pairs that is (0: both means NaN)."""
        first, second = set(first), set(second)
        rows = self.pairs[self.pairs["layer"] == OVERALL]
        chosen = rows[[(a in first and b in second) or (a in second and b in first)
                       for a, b in zip(rows["task_a"], rows["task_b"])]]
        if chosen.empty:
            return float("nan"), float("nan"), 0
        return float(chosen["jaccard"].mean()), float(chosen["chance"].mean()), len(chosen)

    def far_vs_near(self, order: Sequence[str] | None = None) -> str:
        """One sentence on whether far tasks switch off the same weights as near ones.

        `order`: the tasks from near the backbone's source domain to far from it (default:
        `tasks` as given; the embedded tasks are listed that way). The first half are the
        near tasks, the last half the far ones (a middle task is in neither). The sentence
        compares the far tasks' overlap with the near ones to the near tasks' overlap among
        themselves and to chance.
        """
        order = list(self.tasks if order is None else order)
        if len(order) < 2:
            return "One task: there is no overlap to compare."
        half = len(order) // 2
        near, far = order[:half], order[-half:]
        cross, cross_chance, _ = self.between(far, near)
        among, _, pairs = self.between(near, near)
        names = f"far tasks ({', '.join(far)})", f"near ones ({', '.join(near)})"
        if math.isnan(cross):
            return f"Neither the {names[0]} nor the {names[1]} switch off any weight: there is no overlap to compare."
        if cross <= 1.5 * cross_chance:
            verdict = "switch off different weights from"
        elif pairs and cross >= 0.75 * among:
            verdict = "switch off largely the same weights as"
        else:
            verdict = "share part of their switched-off weights with"
        among_text = f", near tasks {among:.2f} among themselves" if pairs and not math.isnan(among) else ""
        return (f"The {names[0]} {verdict} the {names[1]}: Jaccard index {cross:.2f} between far and near"
                f"{among_text}, against {cross_chance:.2f} if each task's zeros fell at random.")


def _pair_counts(off: Tensor) -> Tensor:
    """``counts[a, b]``: how many positions `off` (tasks x weights, bool) is True for both a and
    b, exactly (float32 products summed in chunks under 2**24, totals in int64)."""
    tasks, n = off.shape
    chunk = max(4096, min(2**23, 2**24 // max(tasks, 1)))
    counts = torch.zeros(tasks, tasks, dtype=torch.int64)
    for start in range(0, n, chunk):
        part = off[:, start : start + chunk].to(torch.float32)
        counts += (part @ part.T).round().to(torch.int64).cpu()
    return counts


def _jaccard(both: float, either: float) -> float:
    return both / either if either else float("nan")


def _pair_row(task_a: str, task_b: str, layer: str, depth: int, off_a: int, off_b: int, both: int, n: int,
              chance_both: float, chance_either: float) -> dict:
    """One row of `MaskOverlap.pairs`: two tasks' switched-off weights in `layer` (or overall)."""
    return {"task_a": task_a, "task_b": task_b, "layer": layer, "depth": depth, "weights": n, "off_a": off_a,
            "off_b": off_b, "off_both": both, "off_either": off_a + off_b - both,
            "jaccard": _jaccard(both, off_a + off_b - both), "chance": _jaccard(chance_both, chance_either)}


def mask_overlap(net: PiggybackNet, tasks: Sequence[str] | None = None) -> MaskOverlap:
    """For every pair of `tasks` (default: all the network's), how their switched-off weights
    overlap, per masked layer and overall, and which weights every task switches off
    (`MaskOverlap`). A weight is switched off where the task's mask is 0 (ternary: neither
    kept nor negated). Unknown tasks are refused first."""
    tasks = list(net.tasks) if tasks is None else list(tasks)
    if not tasks:
        raise ValueError("mask_overlap needs at least one task")
    net.check_tasks(tasks)
    pairs = list(itertools.combinations(range(len(tasks)), 2))
    rows, common = [], []
    totals = {pair: [0, 0, 0, 0, 0.0, 0.0] for pair in pairs}  # `_pair_row`'s counts, summed over the layers
    for depth, (layer, masks, weight) in enumerate(net.masked_weights()):
        n = weight.numel()
        off = torch.stack([masks.mask(t, net.tasks[t].mask).reshape(-1) == 0 for t in tasks])
        counts = _pair_counts(off)
        every = int(off.all(0).sum())
        common.append({"layer": layer, "depth": depth, "weights": n, "off_every": every,
                       "off_every_fraction": every / n})
        for a, b in pairs:
            off_a, off_b, both = int(counts[a, a]), int(counts[b, b]), int(counts[a, b])
            chance_both = off_a * off_b / n
            values = (off_a, off_b, both, n, chance_both, off_a + off_b - chance_both)
            rows.append(_pair_row(tasks[a], tasks[b], layer, depth, *values))
            totals[(a, b)] = [total + value for total, value in zip(totals[(a, b)], values)]
    rows += [_pair_row(tasks[a], tasks[b], OVERALL, -1, *total) for (a, b), total in totals.items()]
    every_total, weights_total = sum(r["off_every"] for r in common), sum(r["weights"] for r in common)
    common.append({"layer": OVERALL, "depth": -1, "weights": weights_total, "off_every": every_total,
                   "off_every_fraction": every_total / weights_total if weights_total else float("nan")})
    return MaskOverlap(tasks, pd.DataFrame(rows, columns=OVERLAP_COLUMNS), pd.DataFrame(common, columns=COMMON_COLUMNS))
