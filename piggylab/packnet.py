"""PackNet (Mallya & Lazebnik, CVPR 2018), the pruning baseline of Piggyback (ECCV 2018, §5).

What this is
------------
`PackNet` packs tasks one after another into a single copy of a backbone. Every prunable
weight (every `nn.Conv2d`/`nn.Linear` weight but the classifier's, and the input projections
of `nn.MultiheadAttention`: the same set `PiggybackNet` masks) carries a task index in a
uint8 tensor: 0 = free, k = owned by the k-th task added. `train_packnet` trains a task in
PackNet's three steps (PackNet §3):

1. train the free weights, the task's head and (by default) its own batchnorm, with the
   weights of the earlier tasks in the forward pass but frozen (their gradient is zero);
2. prune: per layer, keep the ``1 - prune_fraction`` share of those weights with the largest
   magnitude, give them index k, set the others to zero and leave them free for later tasks;
3. re-train the kept weights briefly (`retrain_epochs`); after that they never change.

Inference for task k uses exactly the weights with index 1..k, so adding tasks never changes
an earlier task's predictions, but every task gets fewer free weights than the one before it
and starts from what its predecessors left: unlike Piggyback (whose backbone never changes),
the accuracy of a task depends on the task order.

Choices, where PackNet or its peers differ:

- Batchnorm: by default each task trains its own copy of every batchnorm layer (initialised
  from the backbone's, as `PiggybackNet`'s task BN, paper §5.3), so the statistics of one task
  cannot disturb another's. ``bn_mode="frozen"`` keeps the backbone's batchnorm instead, frozen in
  inference mode for every task. (Avalanche's PackNet refuses networks with batchnorm.)
- Biases and every other tensor that is not a prunable weight (batchnorm of the backbone,
  embeddings) stay frozen at their pretrained values; PackNet trains biases with the first
  task only. The lab's tiny ResNet has no conv bias, so this changes nothing there.
- Pruned weights are set to zero (as PackNet's code does), so a later task starts its free
  weights from zero, next to the frozen weights of the earlier tasks.
- Storage: the index takes ``ceil(log2(T + 1))`` bits per weight for T tasks, shared by all
  tasks (`PackNet.index_bits`); each task adds its head and batchnorm copy. The network's
  float weights are stored once, in place of the backbone.

What this is not
----------------
Not a `PiggybackNet` (no masks are learned and the backbone's weights do change) and not saved
to task files (`piggylab.storage` is piggyback's format). It shares with `PiggybackNet` the
multi-task base (`piggylab.tasks.MultiTaskNet`: task registry, heads, task BN, switching) and
the masked layers (`piggylab.masked`, here with a `TaskIndex` per weight instead of
`TaskMasks`), and `train_packnet` runs both of its training phases through the lab's one
`piggylab.train.Trainer`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from .checks import check_choice
from .tasks import BN_MODES, MultiTaskNet, Task
from .train import TrainConfig, Trainer

PHASES = ("eval", "train", "retrain")
MAX_TASKS = 255
"""A uint8 index holds 0 (free) and up to 255 task numbers."""

HISTORY_COLUMNS = ["phase", "epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time"]


@dataclass
class PackTask(Task):
    """One task of a `PackNet`: its number in the index (1, 2, ...) and pruning record."""

    index: int = 0
    prune_fraction: float | None = None
    """The fraction of its free weights the task gave back; None while it is not trained."""
    free_after: int | None = None
    """Free weights left in the network once the task was pruned."""

    @property
    def trained(self) -> bool:
        return self.prune_fraction is not None


class TaskIndex(nn.Module):
    """PackNet's view of one shared weight: its per-weight task index (uint8, 0 = free).

    The weight a layer computes with depends on the active task k and the phase:

    - ``eval``: the weights with index 1..k (task k's network);
    - ``train``: the same plus the free weights (index 0), the only ones with a gradient;
    - ``retrain``: the weights with index 1..k, the gradient reaching only index k.

    It plays the part `piggylab.masked.TaskMasks` plays for piggyback in the same masked
    layers (`weight`, ``merged``, `training_scores`); PackNet has no scores.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("index", torch.zeros(shape, dtype=torch.uint8))
        self.merged = None
        self.task = 0
        self.phase = "eval"

    def training_scores(self) -> None:
        return None

    def visible(self) -> Tensor:
        """Where task `self.task`'s inference network has a weight: index 1..k."""
        return (self.index >= 1) & (self.index <= self.task)

    def weight(self, original: Tensor) -> Tensor:
        if self.phase == "train":
            return torch.where(self.index == 0, original, original.detach() * (self.index < self.task))
        if self.phase == "retrain":
            return torch.where(self.index == self.task, original, original.detach() * self.visible())
        return original * self.visible()

    forward = weight


class PackNet(MultiTaskNet):
    """Tasks packed into one network by iterative pruning (PackNet, CVPR 2018).

    >>> net = PackNet(load_backbone("tiny"), backbone_name="tiny")
    >>> net.add_task("greek", 34)
    >>> train_packnet(net, "greek", train_loader, val_loader, PackNetConfig(prune_fraction=0.5))
    >>> net.add_task("sketch", 10)          # trains only the weights "greek" gave back
    >>> net.set_task("greek"); logits = net(images)

    Tasks are trained in the order they are added, each once; see the module docstring.
    """

    task_type = PackTask
    tasks: dict[str, PackTask]

    def __init__(self, backbone: nn.Module, *, backbone_name: str = "backbone", classifier: str | None = None,
                 bn_mode: str = "task") -> None:
        check_choice(bn_mode, BN_MODES, "bn_mode")
        super().__init__(backbone, backbone_name=backbone_name, classifier=classifier, make_masks=TaskIndex)
        self.bn_mode = bn_mode
        self.phase = "eval"

    # -- structure -------------------------------------------------------------------------
    def indices(self) -> Iterable[tuple[str, TaskIndex, Tensor]]:
        """(layer, task index, shared weight) of every prunable weight."""
        return self.masked_weights()

    def weight(self, layer: str) -> Tensor:
        """The shared float weight of `layer` (every task's values, free ones included)."""
        return self.original_weight(layer)

    @property
    def num_weights(self) -> int:
        """Number of prunable weights (those with a task index)."""
        return self.num_masked_weights

    def task_index(self) -> dict[str, Tensor]:
        """Per layer, a copy of the uint8 task index: 0 = free, k = owned by the k-th task."""
        return {layer: index.index.clone() for layer, index, _ in self.indices()}

    def free_counts(self) -> dict[str, int]:
        """Per layer, how many weights no task owns yet."""
        return {layer: int((index.index == 0).sum()) for layer, index, _ in self.indices()}

    def free_fraction(self) -> float:
        """The fraction of all prunable weights that no task owns yet."""
        return sum(self.free_counts().values()) / self.num_weights

    @property
    def index_bits(self) -> int:
        """Bits per weight that the index needs for the tasks so far: ceil(log2(T + 1))."""
        return max(1, math.ceil(math.log2(len(self.tasks) + 1)))

    # -- tasks -------------------------------------------------------------------------------
    def add_task(self, task: str, num_classes: int, *, class_names: Sequence[str] | None = None,
                 seed: int | None = None) -> PackTask:
        """Add the next task: a fresh head and (with ``bn_mode="task"``) a copy of the backbone's BN.

        The previous task must be trained first (its weights must be packed before another
        task can claim the rest). With a `seed` the head is drawn from its own RNG.
        """
        self.check_new_task(task, num_classes, class_names)
        untrained = [t.name for t in self.tasks.values() if not t.trained]
        if untrained:
            raise ValueError(f"train task {untrained[0]!r} (train_packnet) before adding another")
        if len(self.tasks) >= MAX_TASKS:
            raise ValueError(f"a PackNet holds at most {MAX_TASKS} tasks (uint8 index)")
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            info = self.new_task(task, num_classes, class_names, index=len(self.tasks) + 1)
        if self.bn_mode == "task":
            self.add_task_bn(task)
        self.set_task(task)
        return info

    def remove_task(self, task: str) -> None:
        raise NotImplementedError("a PackNet task cannot be removed: later tasks were trained on top of its weights")

    def activate_weights(self, task: PackTask | None) -> None:
        for _, index, _ in self.indices():
            index.task, index.phase = (0, "eval") if task is None else (task.index, self.phase)

    def set_task(self, task: str, phase: str = "eval") -> None:
        """Make `task` the one the network computes: the weights with index 1..k (PackNet §3);
        `phase` ``train`` or ``retrain`` is how `train_packnet` trains it."""
        self.phase = check_choice(phase, PHASES, "phase")
        super().set_task(task)

    @torch.no_grad()
    def prune(self, task: str, fraction: float) -> dict[str, int]:
        """Step 2 of training `task`: per layer, of the n free weights (all of which the task
        trained), keep the ``n - round(fraction * n)`` largest in magnitude, mark them as the
        task's and zero the others, which stay free. Returns the weights kept per layer."""
        info = self.check_task(task)
        check_fraction(fraction)
        if info.trained:
            raise ValueError(f"task {task!r} was already pruned")
        if task != list(self.tasks)[-1]:
            raise ValueError(f"only the newest task can be pruned, not {task!r}")
        kept = {}
        for layer, index, weight in self.indices():
            owner = index.index.flatten().clone()  # in logical order, whatever the memory format
            free = (owner == 0).nonzero().squeeze(1)
            keep = free.numel() - round(fraction * free.numel())
            top = torch.topk(weight.detach().flatten()[free].abs(), keep, sorted=False).indices
            owner[free[top]] = info.index
            index.index.copy_(owner.view_as(index.index))
            weight.masked_fill_(index.index == 0, 0.0)
            kept[layer] = keep
        info.prune_fraction = float(fraction)
        info.free_after = sum(self.free_counts().values())
        return kept

    def training_groups(self, task: str, phase: str, *, lr: float) -> tuple[nn.Module, list[dict]]:
        """What training `task` in `phase` (``train``: the free weights; ``retrain``: the
        kept ones) changes: the shared weights, gradient-masked by the phase, the task's head
        and its batchnorm copy, all at `lr`. The shared weights need a gradient meanwhile."""
        self.check_task(task)
        check_choice(phase, ("train", "retrain"), "phase")
        self.set_task(task, phase)
        weights = [weight.requires_grad_(True) for _, _, weight in self.indices()]
        params = weights + list(self.heads.heads[task].parameters())
        params += [p for _, bn in self.batchnorms() if task in bn.per_task for p in bn.per_task[task].parameters()]
        return self, [{"params": params, "lr": lr}]

    def storage_table(self) -> pd.DataFrame:
        """Per task: the weights it owns, its head and BN bytes (float32) and its share of the
        index (``index_bits`` per weight over all tasks), beside the one shared network."""
        network = 4 * sum(t.numel() for t in self.backbone_state().values() if t.is_floating_point())
        index_bytes = math.ceil(self.index_bits * self.num_weights / 8)
        owned = {t.index: 0 for t in self.tasks.values()}
        for _, index, _ in self.indices():
            counts = torch.bincount(index.index.flatten().long(), minlength=len(self.tasks) + 1)
            for k in owned:
                owned[k] += int(counts[k])
        rows = []
        for t in self.tasks.values():
            head = 4 * sum(p.numel() for p in self.heads.heads[t.name].parameters())
            bn = sum(4 * v.numel() for k, v in self.task_state(t.name).items() if k.startswith("bn.")
                     and v.is_floating_point())
            rows.append({"task": t.name, "position": t.index, "owned_weights": owned[t.index],
                         "owned_fraction": owned[t.index] / self.num_weights,
                         "used_fraction": sum(owned[k] for k in owned if k <= t.index) / self.num_weights,
                         "prune_fraction": t.prune_fraction, "head_bytes": head, "bn_bytes": bn,
                         "index_bytes": index_bytes / len(self.tasks), "index_bits": self.index_bits,
                         "network_bytes": network})
        return pd.DataFrame(rows)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_mode={self.bn_mode!r}"


def check_fraction(fraction: float) -> float:
    """A prune fraction must be a number in [0, 1): some weights must stay with the task."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"prune_fraction must be a number in [0, 1), got {fraction!r}")
    return float(fraction)


@dataclass
class PackNetConfig(TrainConfig):
    """How one PackNet task trains (PackNet §3, lab-sized): `TrainConfig`'s schedule for the
    first phase (`epochs` of training the free weights at `lr`, times `lr_decay` at each of
    `decay_epochs`), pruning of `prune_fraction` of them (0 keeps them all, e.g. for the last
    task), then `retrain_epochs` at `retrain_lr` (default ``lr * lr_decay``). Its `method` is
    `finetune`: PackNet trains the network's own weights. No weight decay: it would shrink
    the frozen weights of earlier tasks.
    """

    method: str = "finetune"
    epochs: int = 3
    lr: float = 1e-3
    optimizer: str | None = "adam"
    prune_fraction: float = 0.5
    retrain_epochs: int = 1
    retrain_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.prune_fraction)
        if isinstance(self.retrain_epochs, bool) or int(self.retrain_epochs) != self.retrain_epochs \
                or self.retrain_epochs < 0:
            raise ValueError(f"retrain_epochs must be an integer >= 0, got {self.retrain_epochs!r}")
        if self.retrain_lr is not None and not (math.isfinite(float(self.retrain_lr)) and float(self.retrain_lr) > 0):
            raise ValueError(f"retrain_lr must be a positive finite number, got {self.retrain_lr!r}")
        if self.weight_decay:
            raise ValueError("PackNet takes no weight decay: it would shrink the frozen weights of earlier tasks")


def train_packnet(net: PackNet, task: str, train_loader: Iterable, val_loader: Iterable | None = None,
                  config: PackNetConfig | None = None, *, progress: bool = True) -> pd.DataFrame:
    """Train, prune and re-train task `task` of `net` (PackNet §3); return its history.

    One row per epoch: ``phase`` (``train`` or ``retrain``), epoch, step, loss, train_acc,
    val_acc, lr and wall_time (the pruning record is ``net.task(task)``). Both phases run
    through `Trainer` with the config's seed. Afterwards the task is frozen and active.
    """
    config = config or PackNetConfig()
    if net.check_task(task).trained:
        raise ValueError(f"task {task!r} was already trained; PackNet trains each task once")
    retrain_lr = config.retrain_lr if config.retrain_lr is not None else config.lr * config.lr_decay
    phases = [("train", config, config.lr)]
    if config.retrain_epochs:
        phases.append(("retrain", PackNetConfig(**{**config.__dict__, "epochs": config.retrain_epochs,
                                                   "decay_epochs": ()}), retrain_lr))
    histories, start, step = [], time.perf_counter(), 0
    try:
        for phase, phase_config, lr in phases:
            offset = time.perf_counter() - start
            model, groups = net.training_groups(task, phase, lr=lr)
            history = Trainer(phase_config, progress=progress).fit(model, groups, train_loader, val_loader,
                                                                    describe=f"PackNet {phase} of task {task!r}")
            histories.append(history.assign(phase=phase, step=history["step"] + step,
                                            wall_time=history["wall_time"] + offset))
            step += int(history["step"].iloc[-1])
            if phase == "train":
                net.prune(task, config.prune_fraction)
    finally:
        for _, _, weight in net.indices():
            weight.requires_grad_(False)
            weight.grad = None
        net.set_task(task)
    return pd.concat(histories, ignore_index=True)[HISTORY_COLUMNS]
