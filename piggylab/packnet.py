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
  cannot disturb another's. ``bn="frozen"`` keeps the backbone's batchnorm instead, frozen in
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
Not a `PiggybackNet` (no masks are learned and the backbone's weights do change), not saved to
task files (`piggylab.storage` is piggyback's format), and not the piggyback `Trainer`:
`train_packnet` is its own short loop, which reuses `evaluate` and `resolve_device`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .masks import apply_mask, check_choice
from .network import TASK_NAME, TaskBatchNorm, TaskHeads, wrap_backbone
from .train import OPTIMIZERS, _autocast, evaluate, make_optimizer, resolve_device, train_one_epoch

BN_MODES = ("task", "frozen")
MAX_TASKS = 255
"""A uint8 index holds 0 (free) and up to 255 task numbers."""

HISTORY_COLUMNS = ["phase", "epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time"]


@dataclass
class PackTask:
    """One task of a `PackNet`: its number in the index (1, 2, ...), head size and pruning record."""

    name: str
    index: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    prune_fraction: float | None = None
    """The fraction of its free weights the task gave back; None while it is not trained."""
    free_after: int | None = None
    """Free weights left in the network once the task was pruned."""

    @property
    def trained(self) -> bool:
        return self.prune_fraction is not None


class PackedWeight(nn.Module):
    """Parametrization of one shared weight by its per-weight task index (uint8, 0 = free).

    The weight a layer computes with depends on the active task k and the phase:

    - ``eval``: the weights with index 1..k (task k's network);
    - ``train``: the same plus the free weights (index 0), the only ones with a gradient;
    - ``retrain``: the weights with index 1..k, the gradient reaching only index k.
    """

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", torch.zeros_like(weight, dtype=torch.uint8))
        self.task = 0
        self.phase = "eval"

    def visible(self) -> Tensor:
        """Where task `self.task`'s inference network has a weight: index 1..k."""
        return (self.index >= 1) & (self.index <= self.task)

    def forward(self, weight: Tensor) -> Tensor:
        if self.phase == "train":
            return torch.where(self.index == 0, weight, apply_mask(weight.detach(), self.index < self.task))
        if self.phase == "retrain":
            return torch.where(self.index == self.task, weight, apply_mask(weight.detach(), self.visible()))
        return apply_mask(weight, self.visible())


class PackNet(nn.Module):
    """Tasks packed into one network by iterative pruning (PackNet, CVPR 2018).

    >>> net = PackNet(load_backbone("tiny"), backbone_name="tiny")
    >>> net.add_task("greek", 34)
    >>> train_packnet(net, "greek", train_loader, val_loader, PackNetConfig(prune_fraction=0.5))
    >>> net.add_task("sketch", 10)          # trains only the weights "greek" gave back
    >>> net.set_task("greek"); logits = net(images)

    Tasks are trained in the order they are added, each once; see the module docstring.
    """

    def __init__(self, backbone: nn.Module, *, backbone_name: str = "backbone", classifier: str | None = None,
                 bn: str = "task") -> None:
        super().__init__()
        check_choice(bn, BN_MODES, "bn mode")
        backbone, classifier, self.layers = wrap_backbone(backbone, classifier, PackedWeight, unsafe=True)
        self.classifier_name, self.backbone_name, self.bn = classifier, backbone_name, bn
        self.backbone = backbone
        self.tasks: dict[str, PackTask] = {}
        self.active_task: str | None = None

    # -- structure -------------------------------------------------------------------
    def packed(self, layer: str) -> PackedWeight:
        module, attr = self.layers[layer]
        return getattr(module.parametrizations, attr)[0]

    def weight(self, layer: str) -> Tensor:
        """The shared float weight of `layer` (every task's values, free ones included)."""
        module, attr = self.layers[layer]
        return getattr(module.parametrizations, attr).original

    def _packed(self) -> Iterator[tuple[PackedWeight, Tensor]]:
        for layer in self.layers:
            yield self.packed(layer), self.weight(layer)

    @property
    def heads(self) -> TaskHeads:
        return self.backbone.get_submodule(self.classifier_name)

    def batchnorms(self) -> Iterator[TaskBatchNorm]:
        return (m for m in self.backbone.modules() if isinstance(m, TaskBatchNorm))

    @property
    def num_weights(self) -> int:
        """Number of prunable weights (those with a task index)."""
        return sum(w.numel() for _, w in self._packed())

    def task_index(self) -> dict[str, Tensor]:
        """Per layer, a copy of the uint8 task index: 0 = free, k = owned by the k-th task."""
        return {layer: self.packed(layer).index.clone() for layer in self.layers}

    def free_counts(self) -> dict[str, int]:
        """Per layer, how many weights no task owns yet."""
        return {layer: int((self.packed(layer).index == 0).sum()) for layer in self.layers}

    def free_fraction(self) -> float:
        """The fraction of all prunable weights that no task owns yet."""
        return sum(self.free_counts().values()) / self.num_weights

    @property
    def index_bits(self) -> int:
        """Bits per weight that the index needs for the tasks so far: ceil(log2(T + 1))."""
        return max(1, math.ceil(math.log2(len(self.tasks) + 1)))

    # -- tasks -----------------------------------------------------------------------
    def task(self, name: str) -> PackTask:
        """The task called `name` (KeyError naming the known tasks if there is none)."""
        if name not in self.tasks:
            raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(self.tasks) or 'none yet'}")
        return self.tasks[name]

    def add_task(self, name: str, num_classes: int, *, class_names: list[str] | None = None,
                 seed: int | None = None) -> PackTask:
        """Add the next task: a fresh head and (with ``bn="task"``) a copy of the backbone's BN.

        The previous task must be trained first (its weights must be packed before another
        task can claim the rest). With a `seed` the head is drawn from its own RNG.
        """
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise ValueError(f"task name {name!r} must be letters, digits, '_' or '-', starting with a letter or '_'")
        if name in self.tasks:
            raise ValueError(f"task {name!r} already exists")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        untrained = [t.name for t in self.tasks.values() if not t.trained]
        if untrained:
            raise ValueError(f"train task {untrained[0]!r} (train_packnet) before adding another")
        if len(self.tasks) >= MAX_TASKS:
            raise ValueError(f"a PackNet holds at most {MAX_TASKS} tasks (uint8 index)")
        class_names = list(class_names or [])
        if class_names and len(class_names) != int(num_classes):
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        device = next(iter(self._packed()))[1].device
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.heads.heads[name] = nn.Linear(self.heads.in_features, int(num_classes)).to(device)
        if self.bn == "task":
            for bn in self.batchnorms():
                bn.per_task[name] = copy.deepcopy(bn.shared).requires_grad_(True)
        self.tasks[name] = PackTask(name, len(self.tasks) + 1, int(num_classes), class_names)
        self.set_task(name)
        return self.tasks[name]

    def _activate(self, name: str, phase: str) -> None:
        task = self.task(name)
        self.active_task = self.heads.active = name
        for bn in self.batchnorms():
            bn.active = name
        for packed, _ in self._packed():
            packed.task, packed.phase = task.index, phase

    def set_task(self, name: str) -> None:
        """Make `name` the task the network computes: the weights with index 1..k (PackNet §3)."""
        self._activate(name, "eval")

    @torch.no_grad()
    def prune(self, name: str, fraction: float) -> dict[str, int]:
        """Step 2 of training task `name`: per layer, of the n free weights (all of which the task
        trained), keep the ``n - round(fraction * n)`` largest in magnitude, mark them as the
        task's and zero the others, which stay free. Returns the weights kept per layer."""
        task = self.task(name)
        check_fraction(fraction)
        if task.trained:
            raise ValueError(f"task {name!r} was already pruned")
        if name != list(self.tasks)[-1]:
            raise ValueError(f"only the newest task can be pruned, not {name!r}")
        kept = {}
        for layer, (packed, weight) in zip(self.layers, self._packed()):
            free = (packed.index == 0).flatten().nonzero().squeeze(1)
            keep = free.numel() - round(fraction * free.numel())
            top = torch.topk(weight.detach().flatten()[free].abs(), keep, sorted=False).indices
            packed.index.view(-1)[free[top]] = task.index
            weight.masked_fill_(packed.index == 0, 0.0)
            kept[layer] = keep
        task.prune_fraction = float(fraction)
        task.free_after = sum(self.free_counts().values())
        return kept

    def trainable_parameters(self, name: str) -> list[Tensor]:
        """What training task `name` changes: the shared weights (gradient-masked by the
        phase), the task's head and its batchnorm copy."""
        self.task(name)
        params = [w for _, w in self._packed()] + list(self.heads.heads[name].parameters())
        return params + [p for bn in self.batchnorms() if name in bn.per_task for p in bn.per_task[name].parameters()]

    # -- computing -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.active_task is None:
            raise RuntimeError("no active task: add one with add_task(...) or choose one with set_task(...)")
        return self.backbone(x)

    def storage_table(self) -> pd.DataFrame:
        """Per task: the weights it owns, its head and BN bytes (float32) and its share of the
        index (``index_bits`` per weight over all tasks), beside the one shared network."""
        network = 4 * sum(t.numel() for k, t in self.backbone.state_dict().items()
                          if t.is_floating_point() and ".per_task." not in f".{k}" and ".heads." not in f".{k}")
        index_bytes = math.ceil(self.index_bits * self.num_weights / 8)
        owned = {t.index: 0 for t in self.tasks.values()}
        for packed, _ in self._packed():
            counts = torch.bincount(packed.index.flatten().long(), minlength=len(self.tasks) + 1)
            for k in owned:
                owned[k] += int(counts[k])
        rows = []
        for t in self.tasks.values():
            head = 4 * sum(p.numel() for p in self.heads.heads[t.name].parameters())
            bn = 4 * sum(v.numel() for b in self.batchnorms() if t.name in b.per_task
                         for v in b.per_task[t.name].state_dict().values() if v.is_floating_point())
            rows.append({"task": t.name, "position": t.index, "owned_weights": owned[t.index],
                         "owned_fraction": owned[t.index] / self.num_weights,
                         "used_fraction": sum(owned[k] for k in owned if k <= t.index) / self.num_weights,
                         "prune_fraction": t.prune_fraction, "head_bytes": head, "bn_bytes": bn,
                         "index_bytes": index_bytes / len(self.tasks), "index_bits": self.index_bits,
                         "network_bytes": network})
        return pd.DataFrame(rows)

    def extra_repr(self) -> str:
        return (f"backbone={self.backbone_name!r}, layers={len(self.layers)}, weights={self.num_weights}, "
                f"bn={self.bn!r}, tasks={list(self.tasks)}, active={self.active_task!r}")


def check_fraction(fraction: float) -> float:
    """A prune fraction must be a number in [0, 1): some weights must stay with the task."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"prune_fraction must be a number in [0, 1), got {fraction!r}")
    return float(fraction)


@dataclass
class PackNetConfig:
    """Hyper-parameters of training one PackNet task (PackNet §3, lab-sized).

    `epochs` of training the free weights at `lr` (times `lr_decay` at each of `decay_epochs`),
    pruning of `prune_fraction` of them (0 keeps them all, e.g. for the last task), then
    `retrain_epochs` at `retrain_lr` (default ``lr * lr_decay``). No weight decay: it would
    shrink the frozen weights of earlier tasks.
    """

    epochs: int = 3
    retrain_epochs: int = 1
    prune_fraction: float = 0.5
    lr: float = 1e-3
    retrain_lr: float | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    decay_epochs: tuple[int, ...] = ()
    lr_decay: float = 0.1
    device: str = "auto"
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        check_fraction(self.prune_fraction)
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        if int(self.epochs) < 1 or int(self.retrain_epochs) < 0:
            raise ValueError(f"epochs must be at least 1 and retrain_epochs at least 0, got {self.epochs}, "
                             f"{self.retrain_epochs}")
        for name in ("lr", "retrain_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)


def _run_phase(net: PackNet, task: str, phase: str, epochs: int, lr: float, train_loader: Iterable,
               val_loader: Iterable | None, config: PackNetConfig, bar: tqdm, clock: dict) -> list[dict]:
    """Train task `task` for `epochs` in `phase` ("train" or "retrain"); one history row per epoch."""
    device = resolve_device(config.device)
    net._activate(task, phase)
    optimizer = make_optimizer(config.optimizer, net.trainable_parameters(task), lr=lr, momentum=config.momentum)
    milestones = list(config.decay_epochs) if phase == "train" else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_decay)
    autocast, scaler = _autocast(device, config.amp)
    rows = []
    for epoch in range(1, epochs + 1):
        stats, clock["step"] = train_one_epoch(net, train_loader, optimizer, device=device, autocast=autocast,
                                               scaler=scaler, step=clock["step"], on_step=lambda step, loss: bar.update(),
                                               describe=f"PackNet {phase} of task {task!r}")
        rows.append({"phase": phase, "epoch": epoch, "step": clock["step"], **stats,
                     "val_acc": evaluate(net, val_loader, device=device, amp=config.amp) if val_loader is not None
                     else float("nan"),
                     "lr": optimizer.param_groups[0]["lr"], "wall_time": time.perf_counter() - clock["start"]})
        scheduler.step()
    return rows


def train_packnet(net: PackNet, task: str, train_loader: Iterable, val_loader: Iterable | None = None,
                  config: PackNetConfig | None = None, *, progress: bool = True) -> pd.DataFrame:
    """Train, prune and re-train task `task` of `net` (PackNet §3); return its history.

    One row per epoch: ``phase`` (``train`` or ``retrain``), epoch, step, loss, train_acc,
    val_acc, lr and wall_time (the pruning record is ``net.task(task)``). The seed is
    applied to torch's RNG and to the train loader's own generator, if it has one. Afterwards
    the task is frozen and active.
    """
    config = config or PackNetConfig()
    info = net.task(task)
    if info.trained:
        raise ValueError(f"task {task!r} was already trained; PackNet trains each task once")
    torch.manual_seed(config.seed)
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(config.seed)
    net.to(resolve_device(config.device))
    retrain_lr = config.retrain_lr if config.retrain_lr is not None else config.lr * config.lr_decay
    clock = {"step": 0, "start": time.perf_counter()}
    bar = tqdm(total=(config.epochs + config.retrain_epochs) * len(train_loader), desc=f"packnet {task}",
               disable=not progress, leave=False)
    weights = [w for _, w in net._packed()]
    for w in weights:
        w.requires_grad_(True)
    try:
        rows = _run_phase(net, task, "train", config.epochs, config.lr, train_loader, val_loader, config, bar, clock)
        net.prune(task, config.prune_fraction)
        if config.retrain_epochs:
            rows += _run_phase(net, task, "retrain", config.retrain_epochs, retrain_lr, train_loader, val_loader,
                               config, bar, clock)
    finally:
        bar.close()
        for w in weights:
            w.requires_grad_(False)
            w.grad = None
        net.set_task(task)
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)
