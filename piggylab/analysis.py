"""Tables about trained tasks: per-layer sparsity and storage per task (paper §5).

Everything here returns pandas DataFrames; drawing them is `piggylab.plots`' job.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

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
    backbone = sum(t.numel() for t in net.backbone_state().values() if t.is_floating_point())
    head = sum(p.numel() for p in net.heads.heads[task].parameters())
    return 4 * (backbone + head)


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
