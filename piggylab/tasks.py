"""What every network of the lab that serves many tasks over one backbone shares.

`MultiTaskNet` takes a torchvision-style classifier and makes a frozen copy of it in which

- every layer Piggyback masks (every `nn.Conv2d`, `nn.Linear` and `nn.MultiheadAttention`
  but the classifier, paper §3) is a `piggylab.masked.MaskedLayer`;
- the classifier is `TaskHeads`, one `nn.Linear` head per task;
- every batchnorm layer is a `TaskBatchNorm`: the backbone's own, frozen, plus optional
  per-task copies (task-specific BN, §5.3).

It keeps the task registry (`tasks`, with one `Task` record per task), checks task names and
class counts, switches tasks (`set_task`), runs a batch that mixes tasks (`forward_tasks`,
`predict`) and turns one task into a plain model of the backbone's own class
(`plain_model`). What a task keeps inside the masked layers, and how it is trained, is the
subclass's: `piggylab.piggyback.PiggybackNet` learns masks, `piggylab.packnet.PackNet` prunes.

The backbone's own tensors never change: they are frozen, and its batchnorm layers always
compute with their stored statistics. `backbone_state` gives them under the names the
plain backbone has, and `fingerprint` hashes them.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import positive_int
from .masked import MaskedLayer, TaskMasks, each_sample, wrap_layer

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

BN_MODES = ("frozen", "task")
"""Batchnorm of a task: the backbone's, frozen (`frozen`), or the task's own copy (`task`, §5.3)."""


@dataclass
class Task:
    """One task of a network: its name, head size, batchnorm and class names."""

    name: str
    num_classes: int
    task_bn: bool = False
    class_names: list[str] = field(default_factory=list)


class TaskHeads(nn.Module):
    """The classifier slot of the backbone: one `nn.Linear` head per task."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleDict()
        self.active: str | None = None
        self.samples_apart = False  # each sample as alone (`piggylab.masked`, section 6)

    def forward(self, x: Tensor) -> Tensor:
        head = self.heads[self.active]
        if self.samples_apart and x.dim() > 1 and len(x) > 1:
            return each_sample(head, x)
        return head(x)


class TaskBatchNorm(nn.Module):
    """A backbone batchnorm layer, shared and frozen, plus optional per-task copies (§5.3).

    Tasks without their own copy use the shared layer's affine parameters and running
    statistics in inference mode, so training them can never move the backbone. A task with
    task-specific BN trains its own copy (initialised from the shared one) in the usual way.
    """

    def __init__(self, shared: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.shared = shared
        self.per_task = nn.ModuleDict()
        self.active: str | None = None
        self._affine: tuple[tuple, Tensor, Tensor] | None = None  # (key, scale, shift)

    def forward(self, x: Tensor) -> Tensor:
        if self.active in self.per_task:
            return self.per_task[self.active](x)
        bn = self.shared
        if not (x.requires_grad and torch.is_grad_enabled()):  # the plain network's own kernel
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        # Frozen statistics make BN an affine map: one multiply-add, which (unlike
        # F.batch_norm) keeps no copy of its input for the backward pass. Autocast computes
        # addcmul in the widest type (float32): the result goes back to the input's type.
        scale, shift = self.frozen_affine()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = torch.addcmul(shift.view(shape), x, scale.view(shape))
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def frozen_affine(self) -> tuple[Tensor, Tensor]:
        """(scale, shift) with ``bn(x) = x * scale + shift`` for the shared layer in inference
        mode; computed once and again only after its statistics or parameters change.

        Under `torch.compile` it is computed in the graph every time (a few operations on
        per-channel vectors): the cache's key, the tensors' version counters, cannot be traced.
        """
        if torch.compiler.is_compiling():
            return self._affine_map()
        bn = self.shared
        tensors = [t for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias) if t is not None]
        key = (*(t._version for t in tensors), *(id(t) for t in tensors), bn.running_var.device, bn.running_var.dtype)
        if self._affine is None or self._affine[0] != key:
            self._affine = (key, *self._affine_map())
        return self._affine[1], self._affine[2]

    def _affine_map(self) -> tuple[Tensor, Tensor]:
        bn = self.shared
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            shift = -bn.running_mean * scale
            if bn.affine:
                scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        return scale, shift

    def for_task(self, task: str) -> nn.modules.batchnorm._BatchNorm:
        """The batchnorm layer `task` computes with: its own copy, or the shared one."""
        return self.per_task[task] if task in self.per_task else self.shared


def find_classifier(model: nn.Module, name: str | None = None) -> str:
    """The name of `model`'s classifier: `name` if given (it must be an `nn.Linear`), else its
    last `nn.Linear` outside any attention block."""
    if name is not None:
        if not isinstance(model.get_submodule(name), nn.Linear):
            raise ValueError(f"classifier {name!r} is not an nn.Linear layer")
        return name
    inside_attention = {id(m) for a in model.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules()}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in inside_attention]
    if not linears:
        raise ValueError("cannot find the classifier: the model has no nn.Linear layer; pass classifier=")
    return linears[-1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _wrap(module: nn.Module, prefix: str, skip: str, make_masks: Callable, layers: dict[str, MaskedLayer]) -> None:
    """Replace every maskable child of `module` (recursively; not `skip`) by its masked wrapper."""
    for child_name, child in list(module.named_children()):
        name = f"{prefix}{child_name}"
        if name == skip:
            continue
        wrapper = wrap_layer(child, make_masks)
        if wrapper is not None:
            setattr(module, child_name, wrapper)
            layers[name] = wrapper
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, child_name, TaskBatchNorm(child))
        else:
            _wrap(child, f"{name}.", skip, make_masks, layers)


def weight_name(layer: str, attr: str) -> str:
    """The name of one masked weight: its layer's for a layer's own ``weight``, else the
    layer's plus the attribute (attention: ``….in_proj_weight``, ``….out_proj``)."""
    if attr == "weight":
        return layer
    return f"{layer}.{attr.removesuffix('.weight')}"


class MultiTaskNet(nn.Module):
    """A frozen backbone serving many tasks; see the module docstring.

    `make_masks(shape)` makes the per-task view of one masked weight: `TaskMasks` for
    Piggyback, PackNet's task index for PackNet.
    """

    task_type: type[Task] = Task

    def __init__(self, backbone: nn.Module, *, backbone_name: str = "backbone", classifier: str | None = None,
                 make_masks: Callable[[tuple[int, ...]], nn.Module] = TaskMasks) -> None:
        super().__init__()
        backbone = copy.deepcopy(backbone)
        plain_names = {id(t): k for k, t in backbone.state_dict(keep_vars=True).items()}
        self.classifier_name = find_classifier(backbone, classifier)
        head = backbone.get_submodule(self.classifier_name)
        _set_submodule(backbone, self.classifier_name, TaskHeads(head.in_features))
        backbone.requires_grad_(False)
        self._layers: dict[str, MaskedLayer] = {}
        _wrap(backbone, "", self.classifier_name, make_masks, self._layers)
        if not self._layers:
            raise ValueError("the model has no Conv2d, Linear or MultiheadAttention layer besides its classifier")
        self.backbone = backbone
        self._batchnorms = [(name, m) for name, m in backbone.named_modules() if isinstance(m, TaskBatchNorm)]
        self.backbone_name = backbone_name
        wrapped = {plain_names[id(t)]: k for k, t in backbone.state_dict(keep_vars=True).items() if id(t) in plain_names}
        self._backbone_keys = [(plain, wrapped[plain]) for plain in plain_names.values() if plain in wrapped]
        self.masked_layers: dict[str, tuple[MaskedLayer, str]] = {
            weight_name(layer, attr): (wrapper, attr)
            for layer, wrapper in self._layers.items() for attr in wrapper.masked_weights()}
        self.tasks: dict[str, Task] = {}
        self.active_task: str | None = None
        self._fingerprint: str | None = None

    # -- structure -------------------------------------------------------------------------
    def masked_weights(self) -> Iterator[tuple[str, nn.Module, Tensor]]:
        """(name, per-task masks, frozen weight) of every masked weight, in forward order."""
        for layer, wrapper in self._layers.items():
            for attr, (masks, weight) in wrapper.masked_weights().items():
                yield weight_name(layer, attr), masks, weight

    def layer_masks(self, name: str) -> nn.Module:
        """The per-task masks of the masked weight `name`."""
        wrapper, attr = self.masked_layers[name]
        return wrapper.masked_weights()[attr][0]

    def original_weight(self, name: str) -> Tensor:
        """The frozen weight of the masked weight `name`."""
        wrapper, attr = self.masked_layers[name]
        return wrapper.masked_weights()[attr][1]

    @property
    def heads(self) -> TaskHeads:
        return self.backbone.get_submodule(self.classifier_name)

    def batchnorms(self) -> Iterator[tuple[str, TaskBatchNorm]]:
        """(name, layer) of every batchnorm layer, in module order (listed once, at wrapping:
        a switch walks this list, not the module tree)."""
        return iter(self._batchnorms)

    @property
    def num_masked_weights(self) -> int:
        return sum(weight.numel() for _, _, weight in self.masked_weights())

    def backbone_state(self) -> dict[str, Tensor]:
        """The backbone's frozen tensors (no task's), under the plain backbone's names."""
        state = self.backbone.state_dict(keep_vars=True)
        return {plain: state[key] for plain, key in self._backbone_keys}

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the frozen backbone, classifier excepted: weights,
        biases and BN statistics, by the plain backbone's names (`backbone_fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.backbone_state())
        return self._fingerprint

    # -- the task registry ---------------------------------------------------------------------
    def check_task(self, task: str) -> Task:
        """The registered `Task` of `task`, or a KeyError naming the known tasks."""
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none yet"
            raise KeyError(f"unknown task {task!r}; known tasks: {known}")
        return self.tasks[task]

    task = check_task

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Refuse `tasks` if any of them is not a task (the error lists the unknown ones)."""
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise KeyError(f"unknown task(s) {', '.join(map(repr, unknown))}; known tasks: "
                           f"{', '.join(self.tasks) or 'none yet'}")

    def check_new_task(self, task: str, num_classes: int, class_names: Sequence[str] | None) -> tuple[int, list[str]]:
        """Refuse a bad name (or one in use) and a class count that is not a positive integer or
        does not match `class_names`; return (num_classes, class_names)."""
        if not isinstance(task, str) or not TASK_NAME.match(task):
            raise ValueError(f"task name {task!r} must be letters, digits, '_' or '-', starting with a letter or '_'")
        if task in self.tasks:
            raise ValueError(f"task {task!r} already exists; remove it first")
        if hasattr(nn.Module(), task):
            raise ValueError(f"task name {task!r} is reserved (an nn.Module attribute); choose another")
        num_classes = positive_int(num_classes, "num_classes")
        class_names = list(class_names) if class_names is not None else []
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        return num_classes, class_names

    def new_task(self, task: str, num_classes: int, class_names: Sequence[str] | None, **fields) -> Task:
        """Check a new task (`check_new_task`), give it a fresh head and register it."""
        num_classes, class_names = self.check_new_task(task, num_classes, class_names)
        device = next(iter(self.masked_weights()))[2].device
        self.heads.heads[task] = nn.Linear(self.heads.in_features, num_classes).to(device)
        info = self.task_type(task, num_classes, class_names=class_names, **fields)
        self.tasks[task] = info
        return info

    def add_task_bn(self, task: str) -> None:
        """Give the task its own copy of every batchnorm layer, starting from the backbone's (§5.3)."""
        info = self.check_task(task)
        for _, bn in self.batchnorms():
            bn.per_task[task] = copy.deepcopy(bn.shared).requires_grad_(True)
        info.task_bn = True

    def remove_task(self, task: str) -> None:
        """Forget the task: its head, BN copies and what the masked layers keep of it."""
        self.check_task(task)
        for _, masks, _ in self.masked_weights():
            masks.remove_task(task)
        del self.heads.heads[task]
        for _, bn in self.batchnorms():
            if task in bn.per_task:
                del bn.per_task[task]
        del self.tasks[task]
        if self.active_task == task:
            self.active_task = self.heads.active = None
            for _, bn in self.batchnorms():
                bn.active = None
            if self.tasks:
                self.set_task(next(iter(self.tasks)))

    def set_task(self, task: str) -> None:
        """Make `task` the one the network computes: its head, BN and weights (`activate_weights`).
        If making its weights fails, no task is left active, so no layer computes another's."""
        info = self.check_task(task)
        self.active_task = self.heads.active = task
        for _, bn in self.batchnorms():
            bn.active = task
        try:
            self.activate_weights(info)
        except BaseException:
            self.active_task = self.heads.active = None
            self.activate_weights(None)
            raise

    def activate_weights(self, task: Task | None) -> None:
        """Make every masked layer compute `task`'s weights (None: the plain ones); the subclass's."""
        raise NotImplementedError

    def task_state(self, task: str) -> dict[str, Tensor]:
        """The head and task-specific BN tensors of one task (its masks apart)."""
        self.check_task(task)
        state = {f"head.{k}": v for k, v in self.heads.heads[task].state_dict().items()}
        for layer, bn in self.batchnorms():
            if task in bn.per_task:
                state.update({f"bn.{layer}.{k}": v for k, v in bn.per_task[task].state_dict().items()})
        return state

    def load_task_state(self, task: str, state: dict[str, Tensor]) -> None:
        self.check_task(task)
        self.heads.heads[task].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        for layer, bn in self.batchnorms():
            if task in bn.per_task:
                prefix = f"bn.{layer}."
                bn.per_task[task].load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # -- computing -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.active_task is None:
            raise RuntimeError("no active task: add one with add_task(...) or choose one with set_task(...)")
        return self.backbone(x)

    @contextmanager
    def keeping_active_task(self) -> Iterator[None]:
        """Whatever tasks are switched to within, the task active before is active again after."""
        before = self.active_task
        try:
            yield
        finally:
            if before is not None and before != self.active_task and before in self.tasks:
                self.set_task(before)

    @contextmanager
    def samples_apart(self) -> Iterator[None]:
        """Within it, every layer computes each sample of a batch exactly, bit for bit, as a
        batch of that sample alone (``samples_apart`` of the masked layers and the heads)."""
        layers = [*self._layers.values(), self.heads]
        for layer in layers:
            layer.samples_apart = True
        try:
            yield
        finally:
            for layer in layers:
                layer.samples_apart = False

    def forward_tasks(self, x: Tensor, tasks: Sequence[str]) -> list[Tensor]:
        """Each sample's logits under its own task (``tasks[i]`` for ``x[i]``), as a list in
        input order (heads differ in size).

        Samples are grouped by task: one switch and one pass per task, its samples batched.
        Within a pass each sample is computed exactly as alone (`samples_apart`),
        so in eval mode every result equals ``set_task(t); net(x[i:i + 1])[0]`` bit for bit.
        Unknown tasks, and a task list of another length than the batch, are refused before
        anything runs. The active task is the same afterwards.
        """
        tasks = list(tasks)
        if len(tasks) != len(x):
            raise ValueError(f"{len(tasks)} task names for {len(x)} samples; give one per sample")
        self.check_tasks(tasks)
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            groups.setdefault(task, []).append(i)
        out: list[Tensor] = [None] * len(tasks)  # type: ignore[list-item]
        with self.keeping_active_task(), self.samples_apart():
            for task, index in groups.items():
                self.set_task(task)
                for i, logits in zip(index, self(x[index])):
                    out[i] = logits
        return out

    @torch.no_grad()
    def predict(self, x: Tensor, tasks: Sequence[str]) -> Tensor:
        """Each sample's predicted class index under its own task, in input order (`forward_tasks`)."""
        return torch.stack([logits.argmax() for logits in self.forward_tasks(x, tasks)])

    def plain_model(self, task: str) -> nn.Module:
        """A plain model of the backbone's own class computing `task`: its weights baked
        in, its BN (own or shared) and its head as the classifier; frozen, on the same device,
        in this network's training mode. The network is unchanged."""
        with self.keeping_active_task():
            self.set_task(task)
            memo: dict[int, nn.Module] = {id(wrapper): wrapper.unwrap() for wrapper in self._layers.values()}
            for _, bn in self.batchnorms():
                memo[id(bn)] = copy.deepcopy(bn.for_task(task))
            memo[id(self.heads)] = copy.deepcopy(self.heads.heads[task])
            model = copy.deepcopy(self.backbone, memo)
        return model.requires_grad_(False)

    def individual_network(self, task: str) -> nn.Module:
        """A plain, fully trainable copy of the network for `task` (`plain_model`): the
        paper's fine-tuning baseline ("individual networks") starts from it."""
        return self.plain_model(task).requires_grad_(True)

    def extra_repr(self) -> str:
        return (f"backbone={self.backbone_name!r}, masked_layers={len(self.masked_layers)}, "
                f"masked_weights={self.num_masked_weights}, tasks={list(self.tasks)}, active={self.active_task!r}")


def backbone_fingerprint(state: dict[str, Tensor]) -> str:
    """SHA-256 (first 16 hex digits) of a state dict's names and tensor bytes, in order: the
    identity of a backbone (`MultiTaskNet.fingerprint` of a network over it, which leaves the
    classifier out)."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
