"""One trainer for every method of the lab: piggyback, fine-tuning and classifier-only.

`Trainer(method=...).fit(net, task, train_loader, val_loader)` trains one task of a
`PiggybackNet` and returns its history as a pandas DataFrame, one row per epoch.

- `piggyback`: Adam on the task's scores and head (paper §4: the reference always uses Adam
  for scores); the backbone never changes. With task-specific BN (§5.3) the task's own BN
  copy is trained too. At the end the scores are frozen into the 1-bit mask.
- `classifier`: the head (and task BN, if any) only, the mask stays all ones.
- `finetune`: the paper's "individual network" baseline: a full copy of the backbone with the
  task's head, all weights trained (SGD with momentum by default). The trained copy is left
  at ``trainer.model``; the shared network is untouched.

Callbacks, as in minGPT: ``trainer.add_callback("on_step_end" | "on_epoch_end", fn)`` with
``fn(trainer, record)``. This module does not know about files, plots or notebooks.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .masks import check_choice
from .network import PiggybackNet

METHODS = ("piggyback", "finetune", "classifier")
BN_MODES = ("frozen", "task")
OPTIMIZERS = ("adam", "sgd")
EVENTS = ("on_step_end", "on_epoch_end")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; defaults are a short run on the embedded tasks.

    The scores' learning rate is the paper's 1e-4: with Adam each score moves about `lr_scores`
    per step, so at 1e-3 a constant init of 1e-2 crosses tau = 5e-3 within a few noisy steps
    and a large part of the mask switches off before the head has learnt anything.

    `lr` is the head's (and, for `finetune`, every weight's) learning rate, `lr_scores` the
    masks'. The learning rate is multiplied by `lr_decay` at each epoch in `decay_epochs`.
    `bn_mode`: `frozen` keeps the backbone's BN, `task` trains the task's own BN copy (§5.3,
    created if the task has none), None follows the task's own setting. Fine-tuning always
    trains BN, as the paper's baseline does.
    """

    method: str = "piggyback"
    epochs: int = 5
    lr: float = 1e-2
    lr_scores: float = 1e-4
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_epochs: tuple[int, ...] = ()
    lr_decay: float = 0.1
    device: str = "auto"
    seed: int = 0
    amp: bool = True
    bn_mode: str | None = None
    freeze_at_end: bool = True

    def __post_init__(self) -> None:
        check_choice(self.method, METHODS, "method")
        if self.optimizer is not None:
            check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        if self.bn_mode is not None:
            check_choice(self.bn_mode, BN_MODES, "bn_mode")
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        for name in ("lr", "lr_scores"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)

    @property
    def optimizer_name(self) -> str:
        return self.optimizer or ("sgd" if self.method == "finetune" else "adam")


PAPER_RECIPES: dict[str, TrainConfig] = {
    # §4: masks and classifier with Adam at 1e-4, 30 epochs, lr x0.1 after 15 (batch size 32).
    "piggyback": TrainConfig("piggyback", epochs=30, lr=1e-4, lr_scores=1e-4, decay_epochs=(15,)),
    # The individual-network baseline: SGD momentum 0.9 at 1e-3, 30 epochs, decay after 15.
    "finetune": TrainConfig("finetune", epochs=30, lr=1e-3, optimizer="sgd", decay_epochs=(15,)),
    "classifier": TrainConfig("classifier", epochs=30, lr=1e-4, decay_epochs=(15,)),
}
PAPER_BATCH_SIZE = 32


def paper_recipe(method: str = "piggyback", **overrides) -> TrainConfig:
    """The paper's hyper-parameters for `method`, with any field overridden."""
    check_choice(method, PAPER_RECIPES, "method")
    return replace(PAPER_RECIPES[method], **overrides)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def make_optimizer(name: str, params: Iterable, *, lr: float | None = None, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`adam` or `sgd` (with `momentum`) over `params` (tensors or parameter groups with their
    own `lr`), in PyTorch's fused form (one kernel for all tensors, no per-tensor temporaries)
    when every tensor is a floating-point tensor on a CPU or CUDA device, else the plain one."""
    check_choice(name, OPTIMIZERS, "optimizer")
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    devices = {p.device.type for p in tensors}
    fused = devices in ({"cpu"}, {"cuda"}) and all(p.is_floating_point() for p in tensors)
    defaults = {} if lr is None else {"lr": lr}
    if name == "sgd":
        return torch.optim.SGD(params, momentum=momentum, weight_decay=weight_decay, fused=fused, **defaults)
    return torch.optim.Adam(params, weight_decay=weight_decay, fused=fused, **defaults)


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on GPUs that have it, fp16 (with a grad scaler) otherwise; off on CPU."""
    if not enabled or device.type != "cuda":
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def task_sparsity(net: PiggybackNet, task: str) -> float:
    """Fraction of the task's mask entries that are 0 (paper §5), over all masked weights."""
    zeros = sum(m.numel() - int(m.count_nonzero()) for m in net.masks(task).values())
    return zeros / net.num_masked_weights


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, task: str | None = None, device: str | torch.device = "auto",
             amp: bool = True) -> float:
    """Top-1 accuracy of `model` (of `task`, for a `PiggybackNet`) on `loader`, in eval mode."""
    device = resolve_device(device)
    if isinstance(model, PiggybackNet) and task is not None:
        model.set_task(task)
    was_training = model.training
    model.eval().to(device)
    autocast, _ = _autocast(device, amp)
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        total += y.numel()
    model.train(was_training)
    return correct / max(total, 1)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *, device: torch.device,
                    autocast, scaler, step: int, describe: str,
                    on_step: Callable[[int, float], None] | None = None) -> tuple[dict[str, float], int]:
    """One pass over `loader` with cross-entropy: forward under `autocast`, backward (scaled
    when `scaler` is given), optimizer step; `on_step(step, loss)` after each batch.

    Returns ({"loss": mean loss, "train_acc": accuracy}, the global step count after the
    pass). A NaN or infinite loss raises `TrainingDiverged` naming the step and `describe`.
    Shared by every trainer of the lab (`Trainer`, PackNet's).
    """
    model.train()
    seen = correct = 0
    loss_sum = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)  # before the forward: no gradient lives through it
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        step += 1
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at step {step} ({describe}); lower the learning rate")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        batch_loss = loss.item()
        loss_sum += batch_loss * y.numel()
        correct += int((logits.argmax(1) == y).sum())
        seen += y.numel()
        if on_step is not None:
            on_step(step, batch_loss)
    return {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}, step


@dataclass
class Trainer:
    """Trains one task by one method; see the module docstring.

    >>> trainer = Trainer(TrainConfig("piggyback", epochs=3))
    >>> history = trainer.fit(net, "greek", train_loader, val_loader)
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    progress: bool = True
    callbacks: dict[str, list[Callable]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.model: nn.Module | None = None
        self.history: pd.DataFrame | None = None

    def add_callback(self, event: str, fn: Callable) -> None:
        check_choice(event, EVENTS, "event")
        self.callbacks[event].append(fn)

    def _trigger(self, event: str, record: dict) -> None:
        for fn in self.callbacks.get(event, []):
            fn(self, record)

    def _parameter_groups(self, net: PiggybackNet, task: str) -> tuple[nn.Module, list[dict]]:
        cfg = self.config
        if cfg.method == "finetune":
            model = net.individual_network(task)
            return model, [{"params": list(model.parameters()), "lr": cfg.lr}]
        groups = [{"params": net.task_parameters(task, scores=False), "lr": cfg.lr}]
        if cfg.method == "piggyback":
            if net.is_frozen(task):
                raise ValueError(f"task {task!r} was already trained and frozen into a mask; add a new task to train again")
            groups.append({"params": net.task_parameters(task, head=False, bn=False), "lr": cfg.lr_scores})
        return net, groups

    def fit(self, net: PiggybackNet, task: str, train_loader: Iterable, val_loader: Iterable | None = None) -> pd.DataFrame:
        """Train `task` of `net`; return the history (one row per epoch).

        The seed is applied to torch's global RNG and to the train loader's own generator,
        if it has one, so on CPU the same seed gives the same history.
        """
        if not isinstance(net, PiggybackNet):
            raise TypeError(f"fit() trains a task of a PiggybackNet, got {type(net).__name__}")
        net._check_task(task)
        cfg = self.config
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        if getattr(train_loader, "generator", None) is not None:  # the loader's own shuffling RNG
            train_loader.generator.manual_seed(cfg.seed)
        if cfg.bn_mode == "task" and not net.tasks[task].task_bn:
            net.add_task_bn(task)
        elif cfg.bn_mode == "frozen" and net.tasks[task].task_bn:
            raise ValueError(f"task {task!r} has task-specific BN; bn_mode='frozen' would ignore it")
        net.set_task(task)
        model, groups = self._parameter_groups(net, task)
        model.to(device).train()
        self.model = model
        # Classifier-only keeps the mask fixed: its scores need no gradient (and no backward pass).
        fixed_scores = net.task_parameters(task, head=False, bn=False) if cfg.method == "classifier" else []
        for scores in fixed_scores:
            scores.requires_grad_(False)
        optimizer = make_optimizer(cfg.optimizer_name, groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.decay_epochs), gamma=cfg.lr_decay)
        autocast, scaler = _autocast(device, cfg.amp)
        rows, step, start = [], 0, time.perf_counter()
        bar = tqdm(total=cfg.epochs * len(train_loader), desc=f"{cfg.method} {task}", disable=not self.progress, leave=False)
        try:
            for epoch in range(1, cfg.epochs + 1):
                def on_step(step: int, loss: float, epoch: int = epoch) -> None:
                    bar.update()
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
                    self._trigger("on_step_end", {"epoch": epoch, "step": step, "loss": loss})

                stats, step = train_one_epoch(model, train_loader, optimizer, device=device, autocast=autocast,
                                              scaler=scaler, step=step, on_step=on_step,
                                              describe=f"epoch {epoch} of {cfg.method} training of task {task!r}")
                row = {
                    "epoch": epoch, "step": step, **stats,
                    "val_acc": evaluate(model, val_loader, device=device, amp=cfg.amp) if val_loader is not None else float("nan"),
                    "lr": optimizer.param_groups[0]["lr"], "wall_time": time.perf_counter() - start,
                    "sparsity": task_sparsity(net, task) if cfg.method == "piggyback" else 0.0,
                }
                scheduler.step()
                rows.append(row)
                self._trigger("on_epoch_end", row)
        finally:
            bar.close()
            for scores in fixed_scores:
                scores.requires_grad_(True)
            self.history = pd.DataFrame(rows, columns=["epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time", "sparsity"])
        if cfg.method != "finetune" and cfg.freeze_at_end:
            net.freeze_task(task)
        return self.history


def train(net: PiggybackNet, task: str, train_loader: Iterable, val_loader: Iterable | None = None,
          method: str = "piggyback", *, progress: bool = True, **config) -> pd.DataFrame:
    """Shortcut: ``Trainer(TrainConfig(method, **config)).fit(net, task, train_loader, val_loader)``."""
    return Trainer(TrainConfig(method, **config), progress=progress).fit(net, task, train_loader, val_loader)
