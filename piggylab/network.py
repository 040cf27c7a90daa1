"""One frozen backbone, many tasks: the piggyback network (paper §3, §5.3).

`PiggybackNet` wraps any torchvision-style classifier. Every `nn.Conv2d` and `nn.Linear`
weight except the classifier's (and the projection weights kept inside
`nn.MultiheadAttention`) gets a `MaskedWeight` parametrization; the classifier becomes a
set of per-task heads; every batchnorm layer can hold per-task copies (task-specific BN,
§5.3). The backbone's own parameters and buffers never change: they are frozen, and the
shared batchnorm always runs on its stored statistics.

This module holds tasks; it does not train them (see `piggylab.train`) nor write them to
disk (see `piggylab.storage`).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .masks import ActiveTask, MaskConfig, MaskedWeight, TaskAware, recompute_masked_weights
from .switching import FlatWeights, flat_copies

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass
class Task:
    """What a task is, apart from its per-layer masks: head size, BN mode and labels."""

    name: str
    num_classes: int
    mask: MaskConfig
    task_bn: bool = False
    class_names: list[str] = field(default_factory=list)


class TaskHeads(TaskAware, nn.Module):
    """The classifier slot of the backbone: one `nn.Linear` head per task."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleDict()
        self.state = ActiveTask()

    def forward(self, x: Tensor) -> Tensor:
        return self.heads[self.active](x)


class TaskBatchNorm(TaskAware, nn.Module):
    """A backbone batchnorm layer, shared and frozen, plus optional per-task copies (§5.3).

    Tasks without their own copy use the shared layer's affine parameters and running
    statistics in inference mode, so training them can never move the backbone. A task with
    task-specific BN trains its own copy (initialised from the shared one) in the usual way.
    """

    def __init__(self, shared: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.shared = shared
        self.per_task = nn.ModuleDict()
        self.state = ActiveTask()
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
        mode; computed once and again only after its statistics or parameters change."""
        bn = self.shared
        tensors = [t for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias) if t is not None]
        key = (*(t._version for t in tensors), *(id(t) for t in tensors), bn.running_var.device, bn.running_var.dtype)
        if self._affine is None or self._affine[0] != key:
            with torch.no_grad():
                scale = torch.rsqrt(bn.running_var + bn.eps)
                shift = -bn.running_mean * scale
                if bn.affine:
                    scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
            self._affine = (key, scale, shift)
        return self._affine[1], self._affine[2]


def _find_classifier(model: nn.Module, name: str | None) -> str:
    if name is not None:
        if not isinstance(model.get_submodule(name), nn.Linear):
            raise ValueError(f"classifier {name!r} is not an nn.Linear layer")
        return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    if not linears:
        raise ValueError("cannot find the classifier: the model has no nn.Linear layer; pass classifier=")
    return linears[-1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _maskable_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(module name, module, parameter name) of every weight Piggyback masks."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            yield name, module, "weight"
        elif isinstance(module, nn.MultiheadAttention):
            attrs = ["in_proj_weight"] if module._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
            for attr in attrs:
                yield name, module, attr


def wrap_backbone(backbone: nn.Module, classifier: str | None,
                  parametrization: Callable[[Tensor], nn.Module], *, unsafe: bool = False,
                  copy_weights: Callable[[list[Tensor]], list[nn.Parameter]] | None = None
                  ) -> tuple[nn.Module, str, dict[str, tuple[nn.Module, str]]]:
    """A frozen deep copy of `backbone` made ready for tasks: its classifier becomes `TaskHeads`,
    every maskable weight gets ``parametrization(weight)``, every batchnorm a `TaskBatchNorm`.
    `copy_weights`, if given, makes the copies of the maskable weights (in layer order).

    Returns (the copy, the classifier's name, {layer: (module, parameter name)}). Shared by
    `PiggybackNet` and the PackNet baseline, which parametrize the same weights.
    """
    classifier = _find_classifier(backbone, classifier)
    memo: dict[int, nn.Parameter] = {}
    if copy_weights is not None:
        weights = [getattr(m, attr) for name, m, attr in _maskable_weights(backbone) if name != classifier]
        memo = {id(w): c for w, c in zip(weights, copy_weights(weights))}
    backbone = copy.deepcopy(backbone, memo)
    _set_submodule(backbone, classifier, TaskHeads(backbone.get_submodule(classifier).in_features))
    for p in backbone.parameters():
        p.requires_grad_(False)
    layers: dict[str, tuple[nn.Module, str]] = {}
    for name, module, attr in list(_maskable_weights(backbone)):
        parametrize.register_parametrization(module, attr, parametrization(getattr(module, attr)), unsafe=unsafe)
        layers[name if attr == "weight" else f"{name}.{attr}"] = (module, attr)
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer besides its classifier")
    for name, module in list(backbone.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            _set_submodule(backbone, name, TaskBatchNorm(module))
    return backbone, classifier, layers


class PiggybackNet(nn.Module):
    """A frozen backbone serving many tasks through learned weight masks.

    >>> net = PiggybackNet(torchvision.models.resnet18(), backbone_name="resnet18")
    >>> net.add_task("flowers", num_classes=102)   # mask all ones: the pretrained network
    >>> net.set_task("flowers"); logits = net(images)

    With ``recompute=True`` (the default) a training forward keeps no masked weight for
    backward and remakes it layer by layer there (`recompute_masked_weights`): one copy of
    the weights less memory, at no step time measurable on a CPU (benchmarks/RESULTS.md).
    Under autocast a layer keeps its low-precision cast of the weight instead, so there is
    nothing to recompute and the forward runs as with ``recompute=False``.

    Masked: every Conv2d/Linear weight but the classifier's, and the input projections of
    `nn.MultiheadAttention` (ViT attention). Not masked (frozen and shared): biases,
    batchnorm/layernorm parameters, embeddings such as ViT's class token and position
    embedding, and ConvNeXt's layer scales, as in the paper where only conv/fc weights are.
    """

    def __init__(self, backbone: nn.Module, *, backbone_name: str = "backbone", classifier: str | None = None,
                 recompute: bool = True) -> None:
        super().__init__()
        self.recompute = recompute
        backbone, self.classifier_name, self.masked_layers = wrap_backbone(
            backbone, classifier, lambda w: MaskedWeight(), copy_weights=flat_copies)
        self.backbone_name = backbone_name
        self.backbone = backbone
        self._state = ActiveTask()  # one for every task-aware layer: a switch is one assignment
        for slot, (layer, (module, attr)) in enumerate(self.masked_layers.items()):
            weight = self.parametrization(layer)
            weight.state, weight.slot = self._state, slot
            _read_merged_weights_directly(module, attr)
        for _, bn in self.batchnorms():
            bn.state = self._state
        self.heads.state = self._state
        self._flat = FlatWeights(self._original_weights())
        self.tasks: dict[str, Task] = {}
        self._fingerprint: str | None = None

    @property
    def active_task(self) -> str | None:
        """The task the network computes (`set_task`), or None before the first task."""
        return self._state.name

    # -- structure -------------------------------------------------------------------
    def parametrization(self, layer: str) -> MaskedWeight:
        module, attr = self.masked_layers[layer]
        return getattr(module.parametrizations, attr)[0]

    def original_weight(self, layer: str) -> Tensor:
        module, attr = self.masked_layers[layer]
        return getattr(module.parametrizations, attr).original

    def parametrizations(self) -> Iterator[MaskedWeight]:
        for layer in self.masked_layers:
            yield self.parametrization(layer)

    def _original_weights(self) -> list[nn.Parameter]:
        return [self.original_weight(layer) for layer in self.masked_layers]

    @property
    def heads(self) -> TaskHeads:
        return self.backbone.get_submodule(self.classifier_name)

    def batchnorms(self) -> Iterator[tuple[str, TaskBatchNorm]]:
        for name, module in self.backbone.named_modules():
            if isinstance(module, TaskBatchNorm):
                yield name, module

    @property
    def num_masked_weights(self) -> int:
        return sum(self.original_weight(layer).numel() for layer in self.masked_layers)

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the frozen backbone: weights, biases, BN statistics."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in self.backbone_state().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def backbone_state(self, keep_vars: bool = False) -> dict[str, Tensor]:
        """The shared, frozen tensors of the backbone (no task's scores, masks, heads or BN)."""
        task_parts = (".scores.", ".masks.", ".per_task.", ".heads.")
        state = self.backbone.state_dict(keep_vars=keep_vars)
        return {k: v for k, v in state.items() if not any(p in f".{k}" for p in task_parts)}

    # -- tasks -----------------------------------------------------------------------
    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none yet"
            raise KeyError(f"unknown task {task!r}; known tasks: {known}")

    def task(self, name: str) -> Task:
        """The task called `name` (KeyError naming the known tasks if there is none)."""
        self._check_task(name)
        return self.tasks[name]

    def add_task(self, name: str, num_classes: int, *, mask: MaskConfig | None = None, task_bn: bool = False,
                 class_names: list[str] | None = None, activate: bool = True, seed: int | None = None) -> Task:
        """Add a task with a fresh head and fresh scores; by default it becomes the active task.

        With the default `MaskConfig` (binary, tau 5e-3, constant init 1e-2) the mask starts all
        ones, i.e. the new task starts from the pretrained network (paper §3). With a `seed`,
        the head and scores are drawn from their own RNG, so a task starts the same whatever
        tasks were added before it.
        """
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return self._add_task(name, num_classes, mask, task_bn, class_names, activate)

    def _add_task(self, name: str, num_classes: int, mask: MaskConfig | None, task_bn: bool,
                  class_names: list[str] | None, activate: bool) -> Task:
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise ValueError(f"task name {name!r} must be letters, digits, '_' or '-', starting with a letter or '_'")
        if name in self.tasks:
            raise ValueError(f"task {name!r} already exists; remove it first")
        if hasattr(nn.Module(), name):
            raise ValueError(f"task name {name!r} is reserved (an nn.Module attribute); choose another")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        class_names = list(class_names) if class_names is not None else []
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        mask = mask or MaskConfig()
        device = self.original_weight(next(iter(self.masked_layers))).device
        for layer in self.masked_layers:
            self.parametrization(layer).add_task(name, self.original_weight(layer), mask)
        self.heads.heads[name] = nn.Linear(self.heads.in_features, int(num_classes)).to(device)
        self.tasks[name] = Task(name, int(num_classes), mask, False, class_names)
        if task_bn:
            self.add_task_bn(name)
        if activate or self.active_task is None:
            self.set_task(name)
        return self.tasks[name]

    def add_task_bn(self, name: str) -> None:
        """Give the task its own copy of every batchnorm layer, starting from the backbone's (§5.3)."""
        self._check_task(name)
        for _, bn in self.batchnorms():
            own = copy.deepcopy(bn.shared)
            own.requires_grad_(True)
            bn.per_task[name] = own
        self.tasks[name].task_bn = True

    def set_task(self, name: str) -> None:
        """Make `name` the task the network computes. A frozen task's masked weights are
        computed now, into one flat buffer reused from switch to switch (`piggylab.switching`:
        one pass over the flat weights and the task's flat mask); a task still holding scores
        masks at every forward, so the buffer is freed (no stale copy of the weights is held
        while it trains)."""
        self._check_task(name)
        self._state.name = name
        self._state.merged = None  # until merged: no layer may read another task's weights
        if self.is_frozen(name):
            self._merge()
        else:
            self._flat.release()

    def _merge(self) -> None:
        """Bring the merged weights up to date with the active, frozen task: after a switch,
        a change of the masks, or a move, cast or in-place change of the backbone's weights."""
        if not self._flat.intact():
            self._flat = FlatWeights(self._original_weights())
        name = self.active_task
        self._flat.merge(name, lambda: [p.mask(name) for p in self.parametrizations()])
        self._state.merged = self._flat.merged_views

    def remove_task(self, name: str) -> None:
        self._check_task(name)
        for p in self.parametrizations():
            p.remove_task(name)
        self._flat.forget(name)
        del self.heads.heads[name]
        for _, bn in self.batchnorms():
            if name in bn.per_task:
                del bn.per_task[name]
        del self.tasks[name]
        if self.active_task == name:
            self._state.name, self._state.merged = None, None
            remaining = list(self.tasks)
            if remaining:
                self.set_task(remaining[0])

    def freeze_task(self, name: str) -> None:
        """Replace the task's scores by its thresholded masks: all a trained task keeps (§3)."""
        self._check_task(name)
        for p in self.parametrizations():
            p.freeze(name)
        if self.active_task == name:
            self.set_task(name)

    def is_frozen(self, name: str) -> bool:
        self._check_task(name)
        return name not in self.parametrization(next(iter(self.masked_layers))).scores

    def masks(self, name: str) -> dict[str, Tensor]:
        """Per masked layer, the task's mask (bool for binary, int8 for ternary)."""
        self._check_task(name)
        return {layer: self.parametrization(layer).mask(name) for layer in self.masked_layers}

    def set_masks(self, name: str, masks: dict[str, Tensor]) -> None:
        """Fix the task's masks (for loading); shapes must match the backbone's weights. Every
        mask is checked before any is set, so a bad one leaves the task as it was."""
        self._check_task(name)
        config = self.tasks[name].mask
        missing = [layer for layer in self.masked_layers if layer not in masks]
        if missing:
            raise KeyError(f"no mask for {len(missing)} masked layer(s), e.g. {missing[0]!r}")
        for layer in self.masked_layers:
            shape, expected = tuple(masks[layer].shape), tuple(self.original_weight(layer).shape)
            if shape != expected:
                raise ValueError(f"mask for {layer} has shape {shape}, weight has {expected}")
        for layer in self.masked_layers:
            original = self.original_weight(layer)
            self.parametrization(layer).set_mask(name, masks[layer].to(original.device), config)
        self._flat.forget(name)
        if self.active_task == name:
            self.set_task(name)

    def task_parameters(self, name: str, *, scores: bool = True, head: bool = True, bn: bool = True) -> list[nn.Parameter]:
        """The trainable tensors of one task (never a backbone tensor)."""
        self._check_task(name)
        params: list[nn.Parameter] = []
        if scores:
            params += [p.scores[name] for p in self.parametrizations() if name in p.scores]
        if head:
            params += list(self.heads.heads[name].parameters())
        if bn:
            params += [q for _, b in self.batchnorms() if name in b.per_task for q in b.per_task[name].parameters()]
        return params

    def task_state(self, name: str) -> dict[str, Tensor]:
        """The head and task-specific BN tensors of one task (its masks apart)."""
        self._check_task(name)
        state = {f"head.{k}": v for k, v in self.heads.heads[name].state_dict().items()}
        for layer, bn in self.batchnorms():
            if name in bn.per_task:
                state.update({f"bn.{layer}.{k}": v for k, v in bn.per_task[name].state_dict().items()})
        return state

    def load_task_state(self, name: str, state: dict[str, Tensor]) -> None:
        self._check_task(name)
        self.heads.heads[name].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        for layer, bn in self.batchnorms():
            if name in bn.per_task:
                prefix = f"bn.{layer}."
                bn.per_task[name].load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # -- computing -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.active_task is None:
            raise RuntimeError("no active task: add one with add_task(...) or choose one with set_task(...)")
        if self._state.merged is not None:
            self._merge()
        if self.recompute and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            with recompute_masked_weights():
                return self.backbone(x)
        return self.backbone(x)

    def individual_network(self, name: str) -> nn.Module:
        """A plain, fully trainable copy of the backbone with the task's head and BN:
        the paper's fine-tuning baseline ("individual networks") starts from it."""
        self._check_task(name)
        model = copy.deepcopy(self.backbone, {id(self._state): ActiveTask()})  # not the merged weights
        for module in model.modules():
            if parametrize.is_parametrized(module):
                _drop_parametrizations(module)
        _set_submodule(model, self.classifier_name, copy.deepcopy(self.heads.heads[name]))
        for layer, bn in list(model.named_modules()):
            if isinstance(bn, TaskBatchNorm):
                _set_submodule(model, layer, copy.deepcopy(bn.per_task[name] if name in bn.per_task else bn.shared))
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def extra_repr(self) -> str:
        return (f"backbone={self.backbone_name!r}, masked_layers={len(self.masked_layers)}, "
                f"masked_weights={self.num_masked_weights}, tasks={list(self.tasks)}, active={self.active_task!r}")


def _read_merged_weights_directly(module: nn.Module, attr: str) -> None:
    """Make ``module.<attr>`` return a merged weight without calling a module.

    parametrize's property calls the `ParametrizationList` and then the `MaskedWeight` as
    modules: two ``Module.__call__`` per layer and forward, 4.7 us on the development CPU,
    where a plain layer's weight costs 0.5 us, and per-layer Python is what bounds a GPU at
    small batches. While a frozen task is merged the weight is simply
    ``MaskedWeight.merged_weight()``: the property parametrize injected into the module's
    own class is wrapped to return it, and to hand every other case to parametrize.
    """
    parametrized = getattr(type(module), attr)

    def get(self: nn.Module) -> Tensor:
        merged = self._modules["parametrizations"]._modules[attr]._modules["0"].merged_weight()
        return parametrized.fget(self) if merged is None else merged

    setattr(type(module), attr, property(get, parametrized.fset))


def _drop_parametrizations(module: nn.Module) -> None:
    """Turn a (copied) parametrized module back into a plain one holding its original tensors.

    `parametrize.remove_parametrizations` would delete the property from the parametrized
    class, which a deep copy shares with the original network, so the class is swapped back
    here instead.
    """
    originals = {attr: p.original for attr, p in module.parametrizations.items()}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for attr, original in originals.items():
        module.register_parameter(attr, nn.Parameter(original.detach()))
