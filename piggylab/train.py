"""One trainer for any `nn.Module`, and the lab's training recipes.

`Trainer(config).fit(model, groups, train_loader, val_loader)` trains `model` with
cross-entropy on the parameter groups it is given (each with its own learning rate) and
returns the history, one row per epoch, as a pandas DataFrame. It knows nothing about
tasks or masks: which parameters a method trains is the network's to say
(`PiggybackNet.training_groups`, PackNet's phases), as in minGPT, where the trainer trains
whatever model it is handed. Callbacks: ``trainer.add_callback("on_step_end" |
"on_epoch_end", fn)`` with ``fn(trainer, record)``. A callback, or another thread, may call
``trainer.stop()``: the run then ends after the current step, its partial epoch recorded.

Batchnorm layers that train (task-specific BN, §5.3, and fine-tuning) compute with batch
statistics while they train and with their running statistics when evaluated. Those running
statistics are an exponential average over the last batches, each seen with the mask of its
own step; the mask keeps changing, so the average describes none of the masks, and above all
not the final one. So before each validation, and at the end, `recalibrate_batchnorm`
re-estimates them with the current weights and mask: one pass over the training batches, a
plain cumulative average (``momentum=None``). See `TrainConfig.recalibrate_bn`.

Nothing lost: the first batch is checked before any step (an empty loader, images that do
not fit the model, labels that are not its classes are refused, naming the run's task), and
with ``checkpoint=PATH`` the run's whole state is saved after every epoch, so that
``resume=True`` continues a killed run exactly (`piggylab.checkpoints`).

`train(net, task, ...)` is the shortcut for one task of a `PiggybackNet`; `evaluate` gives
top-1 accuracy. This module does not know about task files, plots or notebooks; the checkpoint
file itself is `piggylab.checkpoints`'.
"""

from __future__ import annotations

import hashlib
import json
import bisect
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import Progress, TrainingState
from .checks import check_batch_count, check_choice, check_images, check_labels, images_and_labels
from .piggyback import BN_MODES, METHODS, PiggybackNet
from .tasks import MultiTaskNet, backbone_fingerprint

OPTIMIZERS = ("adam", "sgd")
EVENTS = ("on_step_end", "on_epoch_end")
HISTORY_COLUMNS = ["epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time"]
OUTSIDE_A_RUN = ("device", "freeze_at_end")
"""`TrainConfig` fields that do not determine a run (what happens after it, where it computes):
a checkpoint resumes whatever they are; every other field must be the checkpoint's."""


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (a *recipe*); defaults are a short run on the embedded tasks.

    `method`: `piggyback`, `classifier` or `finetune` (`PiggybackNet.training_groups`).
    `lr` is the head's (and task BN's, and for `finetune` every weight's) learning rate,
    `lr_scores` the masks'; both are multiplied by `lr_decay` at each epoch in `decay_epochs`.
    With Adam each score moves about `lr_scores` per step, so the scores' learning rate sets
    how many consistent steps a weight needs to leave the mask (the constant init 1e-2 is
    5e-3 above tau). `bn_mode`: `frozen` keeps the backbone's BN, `task` trains the task's own
    BN copy (§5.3, created if the task has none), None follows the task's own setting.
    `warmup_epochs`: epochs in which a piggyback task's head (and task BN) train alone before its
    scores join, so that the first score updates follow the gradient of a trained head rather
    than of a random one (the issue of short runs: data/README.md). `recalibrate_bn`: re-estimate
    trained batchnorm statistics before each validation and at the end (module docstring).
    `freeze_at_end`: a piggyback task keeps only its mask afterwards.
    `channels_last`: images and 4-d weights in channels-last memory order (`fit`), which the CPU
    and GPU convolution kernels run faster on (benchmarks/RESULTS.md); the values are the same.
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
    warmup_epochs: int = 0
    device: str = "auto"
    seed: int = 0
    amp: bool = True
    bn_mode: str | None = None
    recalibrate_bn: bool = True
    freeze_at_end: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        check_choice(self.method, METHODS, "method")
        if self.optimizer is not None:
            check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        if self.bn_mode is not None:
            check_choice(self.bn_mode, BN_MODES, "bn_mode")
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or int(self.epochs) < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        for name in ("lr", "lr_scores"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if isinstance(self.warmup_epochs, bool) or int(self.warmup_epochs) != self.warmup_epochs \
                or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be an integer from 0 to epochs - 1 ({self.epochs - 1}), "
                             f"got {self.warmup_epochs!r}")
        self.epochs = int(self.epochs)
        self.warmup_epochs = int(self.warmup_epochs)
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


def autocast_for(device: torch.device, enabled: bool):
    """(autocast context, grad scaler): bf16 autocast on GPUs that have it, fp16 with a grad
    scaler otherwise; off on CPU."""
    if not enabled or device.type != "cuda":
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def learning_rate_schedule(optimizer: torch.optim.Optimizer, decay_epochs: Sequence[int],
                           lr_decay: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's learning rate times `lr_decay` at each epoch of `decay_epochs` (as
    `MultiStepLR`), and 0 before the group's ``start_epoch`` (default 0): a group that joins
    later, such as the scores after a head warm-up (`TrainConfig.warmup_epochs`)."""
    milestones = sorted(decay_epochs)

    def factor(start: int):
        return lambda epoch: 0.0 if epoch < start else lr_decay ** bisect.bisect_right(milestones, epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g.get("start_epoch", 0)) for g in optimizer.param_groups])


def trained_batchnorms(model: nn.Module, groups: Iterable[dict]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batchnorm layers of `model` whose affine parameters are in the parameter `groups`
    (the ones being trained; another task's BN copy is not, whatever its requires_grad)."""
    trained = {id(p) for group in groups for p in group["params"]}
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.weight is not None and id(m.weight) in trained]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, layers: Iterable[nn.modules.batchnorm._BatchNorm], loader: Iterable, *,
                          device: str | torch.device = "auto", amp: bool = True) -> int:
    """Re-estimate the running statistics of the batchnorm `layers` of `model` (see the module
    docstring): reset, one pass over `loader` in training mode with a cumulative average
    (``momentum=None``), momentum restored. Nothing else changes. Returns the images seen."""
    layers = list(layers)
    if not layers:
        return 0
    device = resolve_device(device)
    momenta = [m.momentum for m in layers]
    was_training = model.training
    autocast, _ = autocast_for(device, amp)
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        channels_last = prefers_channels_last(model)
        for x, _ in loader:
            with autocast:
                model(to_device(x, device, channels_last))
            seen += len(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return seen


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether `model`'s first 4-d weight is in channels-last memory order (images are then given so too)."""
    for p in model.parameters():
        if p.dim() == 4:
            return not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
    return False


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch of images on `device`, in channels-last order if asked (4-d only)."""
    if channels_last and x.dim() == 4:
        return x.to(device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device, non_blocking=True)


def run_name(action: str, model: nn.Module, task: str | None = None) -> str:
    """How errors name a run: "ACTION of task 'T'" (`task`, or a multi-task network's active
    task), else just `action`."""
    task = task if task is not None else model.active_task if isinstance(model, MultiTaskNet) else None
    return f"{action} of task {task!r}" if task is not None else action


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, task: str | None = None, device: str | torch.device = "auto",
             amp: bool = True, describe: str | None = None) -> float:
    """Top-1 accuracy of `model` (of `task`, for a multi-task network) on `loader`, in eval mode.

    Refuses an empty loader, images that do not fit the model's first layer and labels that are
    not class indices of its output (`piggylab.checks`); errors start with `describe` (default:
    "evaluation of task 'T'").
    """
    device = resolve_device(device)
    if isinstance(model, MultiTaskNet) and task is not None:
        model.set_task(task)
    describe = describe or run_name("evaluation", model, task)
    was_training = model.training
    model.eval().to(device)
    autocast, _ = autocast_for(device, amp)
    channels_last = prefers_channels_last(model)
    batches = correct = total = 0
    try:
        for batch in loader:
            x, y = images_and_labels(batch, describe)
            if not batches:
                check_images(x, model, describe)
            with autocast:
                logits = model(to_device(x, device, channels_last))
            check_labels(y, len(x), logits.shape[1], describe)
            correct += int((logits.argmax(1) == y.to(device, non_blocking=True)).sum())
            total += y.numel()
            batches += 1
    finally:
        model.train(was_training)
    check_batch_count(batches, f"{describe}: the loader")
    return correct / total


@dataclass
class Trainer:
    """Trains any `nn.Module` on the parameter groups it is given; see the module docstring.

    >>> model, groups = net.training_groups("greek", "piggyback", lr=1e-2, lr_scores=1e-4)
    >>> history = Trainer(TrainConfig(epochs=3)).fit(model, groups, train_loader, val_loader)

    Uses `config`'s schedule and optimisation fields (epochs, optimizer, momentum,
    weight_decay, decay_epochs, lr_decay, device, seed, amp, recalibrate_bn); the learning
    rates are the groups'.
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    progress: bool = True
    callbacks: dict[str, list[Callable]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.model: nn.Module | None = None
        self.history: pd.DataFrame | None = None
        self.stopped = False
        """Whether the last `fit` ended early, at a `stop` request."""
        self._stop_requested = threading.Event()

    def stop(self) -> None:
        """Ask the running `fit` to end after the current step; safe from a callback or another
        thread. A request made before `fit` starts is dropped (each `fit` starts afresh)."""
        self._stop_requested.set()

    def add_callback(self, event: str, fn: Callable) -> None:
        check_choice(event, EVENTS, "event")
        self.callbacks[event].append(fn)

    def _trigger(self, event: str, record: dict) -> None:
        for fn in self.callbacks.get(event, []):
            fn(self, record)

    def fit(self, model: nn.Module, groups: list[dict], train_loader: Iterable, val_loader: Iterable | None = None,
            *, describe: str | None = None, epoch_metrics: Mapping[str, Callable[[], float]] | None = None,
            task: str | None = None, backbone: str | None = None, checkpoint: str | Path | None = None,
            resume: bool = False) -> pd.DataFrame:
        """Train `model` on `groups`; return the history, one row per epoch (`HISTORY_COLUMNS`
        plus one column per `epoch_metrics` entry, each called after the epoch).

        The seed is applied to torch's global RNG and to the train loader's own generator, if
        it has one, so on CPU the same seed gives the same history. `describe` names the run in
        the progress bar and in errors (default: "training of task 'T'", `run_name`).

        Before the first step, the first batch is checked (`piggylab.checks`): an empty loader,
        images that do not fit the model's first layer, labels that are not class indices of
        its output (found by running one image) are refused, with nothing changed.

        With a `checkpoint` path, the run's state is written there after every epoch
        (`piggylab.checkpoints`); with ``resume=True`` and a checkpoint there, the run goes on
        from its last complete epoch, as if it had never stopped (on CPU, bit for bit). The
        checkpoint belongs to the run: `task` (default: a multi-task network's active task),
        `backbone` (default: `model_fingerprint`) and the config's fields but `OUTSIDE_A_RUN`
        must be the same, or it is refused with the difference named. Callbacks see the epochs
        and steps this call trains, not those read back.

        After a `stop` request the run ends once the current step is done: the epoch it was in
        is recorded as its last row (trained on fewer batches, validated as any epoch, not
        checkpointed: a resume starts it again) and `stopped` is set.
        """
        cfg = self.config
        self._stop_requested.clear()
        self.stopped = False
        device = resolve_device(cfg.device)
        describe = describe or run_name("training", model, task)
        for loader, which in ((train_loader, "train"), (val_loader, "validation")):
            if hasattr(loader, "__len__"):
                check_batch_count(len(loader), f"{describe}: the {which} loader")
        torch.manual_seed(cfg.seed)
        if getattr(train_loader, "generator", None) is not None:  # the loader's own shuffling RNG
            train_loader.generator.manual_seed(cfg.seed)
        model.to(device).train()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        optimizer = make_optimizer(cfg.optimizer_name, groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = learning_rate_schedule(optimizer, cfg.decay_epochs, cfg.lr_decay)
        autocast, scaler = autocast_for(device, cfg.amp)
        batchnorms = trained_batchnorms(model, groups) if cfg.recalibrate_bn else []
        epoch_metrics = dict(epoch_metrics or {})
        state = None if checkpoint is None else training_state(
            model, groups, optimizer, scheduler, scaler, train_loader, device, cfg, task=task, backbone=backbone)
        progress = Progress(0, 0, [])
        if state is not None and resume and Path(checkpoint).exists():
            progress = state.load(checkpoint)
        rows, step, num_classes = list(progress.history), progress.step, None
        start = time.perf_counter() - (rows[-1]["wall_time"] if rows else 0.0)
        bar = tqdm(total=cfg.epochs * len(train_loader), initial=progress.epoch * len(train_loader), desc=describe,
                   disable=not self.progress, leave=False)
        try:
            for epoch in range(progress.epoch + 1, cfg.epochs + 1):
                if epoch > progress.epoch + 1 and self._stop_requested.is_set():  # asked since the last step
                    self.stopped = True
                    break
                model.train()
                seen = correct = 0
                loss_sum = 0.0
                for batch in train_loader:
                    if seen and self._stop_requested.is_set():  # after a step of this epoch: it ends here
                        self.stopped = True
                        break
                    x, y = images_and_labels(batch, describe)
                    if num_classes is None:  # the first batch: checked before anything changes
                        num_classes = output_classes(model, x, device, autocast, describe)
                    check_labels(y, len(x), num_classes, describe)
                    x, y = to_device(x, device, cfg.channels_last), y.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)  # before the forward: no gradient lives through it
                    with autocast:
                        logits = model(x)
                        loss = F.cross_entropy(logits, y)
                    step += 1
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(f"loss is {loss.item()} at step {step} (epoch {epoch} of {describe}); "
                                               "lower the learning rate")
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
                    bar.update()
                    bar.set_postfix(epoch=epoch, loss=f"{batch_loss:.3f}")
                    self._trigger("on_step_end", {"epoch": epoch, "step": step, "loss": batch_loss})
                check_batch_count(seen, f"{describe}: the train loader")
                if batchnorms and (val_loader is not None or epoch == cfg.epochs or self.stopped):
                    recalibrate_batchnorm(model, batchnorms, train_loader, device=device, amp=cfg.amp)
                row = {"epoch": epoch, "step": step, "loss": loss_sum / seen, "train_acc": correct / seen,
                       "val_acc": evaluate(model, val_loader, device=device, amp=cfg.amp,
                                           describe=f"{describe}, validation") if val_loader is not None
                       else float("nan"),
                       "lr": optimizer.param_groups[0]["lr"], "wall_time": time.perf_counter() - start}
                row.update({name: fn() for name, fn in epoch_metrics.items()})
                scheduler.step()
                rows.append(row)
                if state is not None and not self.stopped:
                    state.save(checkpoint, Progress(epoch, step, rows))
                self._trigger("on_epoch_end", row)
        finally:
            bar.close()
            self.history = pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, *epoch_metrics])
        return self.history


@torch.no_grad()
def output_classes(model: nn.Module, images: torch.Tensor, device: torch.device, autocast: Any, describe: str) -> int:
    """The number of classes `model` scores, from one of `images` run in eval mode (no statistic
    moves), after checking the images fit its first layer (`piggylab.checks.check_images`)."""
    check_images(images, model, describe)
    was_training = model.training
    model.eval()
    try:
        with autocast:
            return model(to_device(images[:1], device, prefers_channels_last(model))).shape[1]
    finally:
        model.train(was_training)


def moving_batchnorms(model: nn.Module, groups: Iterable[dict]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batchnorm layers whose running statistics training moves: in a multi-task network the
    trained ones (`trained_batchnorms`: its shared layers compute with their stored statistics,
    other tasks' copies do not run); in any other module every one (each runs in training mode)."""
    if isinstance(model, MultiTaskNet):
        return trained_batchnorms(model, groups)
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def trained_tensors(model: nn.Module, groups: list[dict]) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """(per group, the names of its parameters; every tensor a run changes, by name): the groups'
    parameters and the buffers of `moving_batchnorms`. A group tensor that is not a parameter
    of `model` is refused (a checkpoint names tensors by the model's names)."""
    names = {id(p): name for name, p in model.named_parameters()}
    outside = [i for i, group in enumerate(groups) for p in group["params"] if id(p) not in names]
    if outside:
        raise ValueError(f"parameter group {outside[0]} holds a tensor that is not a parameter of the model; "
                         "a checkpoint can only name the model's own parameters")
    group_names = [[names[id(p)] for p in group["params"]] for group in groups]
    parameters = dict(model.named_parameters())
    tensors = {name: parameters[name] for names_ in group_names for name in names_}
    moving = {id(b) for layer in moving_batchnorms(model, groups) for b in layer.buffers()}
    tensors.update({name: b for name, b in model.named_buffers() if id(b) in moving})
    return group_names, tensors


def model_fingerprint(model: nn.Module, trained: Iterable[str]) -> str:
    """A multi-task network's backbone fingerprint; for any other module, a hash of its tensors'
    names, shapes and types and of the values of those that do not train (not in `trained`)."""
    if isinstance(model, MultiTaskNet):
        return model.fingerprint()
    trained = set(trained)
    state = model.state_dict()
    layout = [(name, list(t.shape), str(t.dtype)) for name, t in state.items()]
    frozen = backbone_fingerprint({name: t for name, t in state.items() if name not in trained})
    return hashlib.sha256(json.dumps([layout, frozen]).encode()).hexdigest()[:16]


def run_identity(config: TrainConfig, model: nn.Module, trained: Iterable[str], train_loader: Iterable, *,
                 task: str | None = None, backbone: str | None = None) -> dict[str, Any]:
    """What makes a checkpoint this run's: the task (default: a multi-task network's active
    task), the backbone (default: `model_fingerprint` with the `trained` tensors' names), the
    train batches per epoch and every config field but `OUTSIDE_A_RUN`."""
    task = task if task is not None else model.active_task if isinstance(model, MultiTaskNet) else None
    return {"task": task, "backbone": backbone or model_fingerprint(model, trained),
            "train_batches": len(train_loader) if hasattr(train_loader, "__len__") else None,
            "config": {f.name: getattr(config, f.name) for f in fields(config) if f.name not in OUTSIDE_A_RUN}}


def training_state(model: nn.Module, groups: list[dict], optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
                   train_loader: Iterable, device: torch.device, config: TrainConfig, *, task: str | None = None,
                   backbone: str | None = None) -> TrainingState:
    """The `TrainingState` of one run: its identity (`run_identity`), trained tensors
    (`trained_tensors`), optimizer, scheduler, grad scaler and random generators (torch's,
    CUDA's on a GPU, the train loader's and its sampler's)."""
    group_names, tensors = trained_tensors(model, groups)
    identity = run_identity(config, model, tensors, train_loader, task=task, backbone=backbone)
    generators: list[torch.Generator] = []
    for generator in (getattr(train_loader, "generator", None),
                      getattr(getattr(train_loader, "sampler", None), "generator", None)):
        if isinstance(generator, torch.Generator) and all(generator is not g for g in generators):
            generators.append(generator)
    return TrainingState(identity, group_names, tensors, optimizer, scheduler, scaler, generators,
                         cuda=device.type == "cuda")


def task_sparsity(net: PiggybackNet, task: str) -> float:
    """Fraction of the task's mask entries that are 0 (paper §5), over all masked weights."""
    zeros = sum(m.numel() - int(m.count_nonzero()) for m in net.masks(task).values())
    return zeros / net.num_masked_weights


def fit_task(net: PiggybackNet, task: str, train_loader: Iterable, val_loader: Iterable | None = None,
             config: TrainConfig | None = None, *, progress: bool = True,
             callbacks: Mapping[str, Callable] | None = None, checkpoint: str | Path | None = None,
             resume: bool = False) -> tuple[nn.Module, pd.DataFrame]:
    """Train `task` of `net` by ``config.method``: ``(trained model, history)``.

    The model is `net` itself for `piggyback` and `classifier` (a piggyback task is frozen
    into its mask afterwards, unless ``freeze_at_end=False``) and the task's individual
    network for `finetune` (the shared network is untouched). Piggyback histories have a
    `sparsity` column. `checkpoint` and `resume` are `Trainer.fit`'s, for this task over
    `net`'s backbone: a resumed task is frozen only once its last epoch is done.
    """
    config = config or TrainConfig()
    model, groups = net.training_groups(task, config.method, lr=config.lr, lr_scores=config.lr_scores,
                                        bn_mode=config.bn_mode, scores_from=config.warmup_epochs)
    trainer = Trainer(config, progress=progress)
    for event, fn in (callbacks or {}).items():
        trainer.add_callback(event, fn)
    metrics = {"sparsity": lambda: task_sparsity(net, task)} if config.method == "piggyback" else {}
    history = trainer.fit(model, groups, train_loader, val_loader, epoch_metrics=metrics,
                          describe=f"{config.method} training of task {task!r}", task=task,
                          backbone=net.fingerprint(), checkpoint=checkpoint, resume=resume)
    if config.method == "piggyback" and config.freeze_at_end:
        net.freeze_task(task)
    return model, history


def train(net: PiggybackNet, task: str, train_loader: Iterable, val_loader: Iterable | None = None,
          method: str = "piggyback", *, progress: bool = True, checkpoint: str | Path | None = None,
          resume: bool = False, **config: Any) -> pd.DataFrame:
    """Shortcut: train `task` of `net` by `method` (`fit_task`, with its `checkpoint` and
    `resume`) with ``TrainConfig(method, **config)``; return the history."""
    return fit_task(net, task, train_loader, val_loader, TrainConfig(method, **config), progress=progress,
                    checkpoint=checkpoint, resume=resume)[1]
