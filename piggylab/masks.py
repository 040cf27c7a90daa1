"""Masks over frozen weights: score init, thresholding and the masked weight of one layer.

This module is the bottom of piggylab (paper §3). It knows about a single weight tensor
and the real-valued *scores* that decide its *mask*; it knows nothing of networks, tasks
files or training loops.

- `init_scores` fills scores by one of the paper's schemes (`constant`, `uniform`, `weight`).
- `threshold_scores` turns scores into a mask: `binary` {0, 1} or `ternary` {-1, 0, 1}.
- `masked_weight` computes ``W * mask(scores)`` with the straight-through gradient
  ``dL/dscores = dL/dW_eff * W`` (optionally divided by |W|, as the reference allows).
- `recompute_masked_weights` trains without keeping masked weights for backward: they are
  remade there, and ``conv2d``/``linear`` on them run fused (`RecomputedWeight`).
- `MaskedWeight` is a `torch.nn.utils.parametrize` parametrization that holds one mask per
  task for one weight: the frozen weight stays at ``parametrizations.<name>.original``.
- `ActiveTask` / `TaskAware`: the active task, one object shared by a network's layers.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_KINDS = ("binary", "ternary")
INIT_SCHEMES = ("constant", "uniform", "weight")
GRAD_SCALINGS = ("none", "layer", "elementwise")

DEFAULT_THRESHOLD = 5e-3
"""tau of the reference code: a score above it keeps its weight."""

DEFAULT_SCALE = {"constant": 1e-2, "uniform": 1e-2, "weight": 1.0}
"""Per init scheme: the constant, the half-width of the uniform range, or the multiplier of
mean |W| (the reference's 1e-2 with tau 5e-3 starts from an all-ones mask)."""


def check_choice(value: str, choices: Collection[str], what: str) -> str:
    """`value` if it is one of `choices`, else a ValueError naming them (every option check
    of the lab goes through here, so they all read the same)."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def _finite_number(value: float, what: str, *, positive: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{what} must be {kind} finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class MaskConfig:
    """How one task's mask is made: its kind, cut-off, score init and gradient scaling.

    `threshold` is tau: binary masks keep weights whose score is above tau; ternary masks
    (paper §3, "ternary masks") map s < 0 to -1, 0 <= s <= tau to 0 and s > tau to +1, the
    reference's two cut-offs. `grad_scaling` divides score gradients by the layer's mean |W|
    (`layer`) or by |W| itself (`elementwise`), the reference's optional normalisation.
    """

    kind: str = "binary"
    threshold: float = DEFAULT_THRESHOLD
    init: str = "constant"
    scale: float | None = None
    grad_scaling: str = "none"

    def __post_init__(self) -> None:
        check_choice(self.kind, MASK_KINDS, "mask kind")
        check_choice(self.init, INIT_SCHEMES, "score init")
        check_choice(self.grad_scaling, GRAD_SCALINGS, "gradient scaling")
        _finite_number(self.threshold, "threshold")
        if self.scale is not None:
            _finite_number(self.scale, "scale", positive=True)

    @property
    def init_scale(self) -> float:
        return DEFAULT_SCALE[self.init] if self.scale is None else float(self.scale)


def init_scores(weight: Tensor, config: MaskConfig) -> Tensor:
    """New scores for `weight` by the paper's schemes (§3, "initialization").

    `constant` (default): every score equals the scale (1e-2 > tau), so the mask starts all
    ones and training starts exactly from the pretrained network, the scheme that works.
    `uniform`: scores drawn from U(-scale, scale), so part of the mask starts off.
    `weight`: every score of the layer equals scale * mean |W| (the reference's weight-based
    init). Uses the global torch RNG, so `torch.manual_seed` makes it repeatable.
    """
    scale = config.init_scale
    scores = torch.empty_like(weight, dtype=torch.float32)
    if config.init == "constant":
        return scores.fill_(scale)
    if config.init == "uniform":
        return scores.uniform_(-scale, scale)
    return scores.fill_(scale * weight.detach().abs().mean().item())


def threshold_scores(scores: Tensor, kind: str = "binary", threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """The mask of `scores`: bool for `binary`, int8 in {-1, 0, 1} for `ternary`."""
    if kind == "binary":
        return scores > threshold
    check_choice(kind, MASK_KINDS, "mask kind")
    return (scores > threshold).to(torch.int8) - (scores < 0).to(torch.int8)


def apply_mask(weight: Tensor, mask: Tensor) -> Tensor:
    """``weight * mask`` without a float copy of the mask: one pass for a bool (binary) mask."""
    if mask.dtype != torch.bool:
        return weight * mask
    return torch.where(mask, weight, 0.0)


def _mask_weight(weight: Tensor, scores: Tensor, kind: str, threshold: float) -> Tensor:
    """``W * mask(scores)``, outside autograd. Binary: the 0/1 mask is written straight into
    the output and multiplied by W in place, two vectorised passes, 2.5x faster than `where`
    on a CPU and with no separate bool mask."""
    if kind == "binary":
        return torch.gt(scores, threshold, out=torch.empty_like(weight)).mul_(weight)
    return apply_mask(weight, threshold_scores(scores, kind, threshold))


class _StraightThroughMask(torch.autograd.Function):
    """W * mask(s) forward; the identity through the threshold backward (paper §3).

    Saves only W, the frozen weight itself (nothing new): the gradient ``dL/ds = dL/dW_eff * W``
    does not need the mask.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, kind: str, threshold: float, grad_scaling: str) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.grad_scaling = grad_scaling
        return _mask_weight(weight, scores, kind, threshold)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (weight,) = ctx.saved_tensors
        return None, score_gradient_(grad_output * weight, weight, ctx.grad_scaling), None, None, None


def score_gradient_(grad: Tensor, weight: Tensor, grad_scaling: str) -> Tensor:
    """``dL/ds`` from ``grad = dL/dW_eff * W``, in place: divided by the layer's mean |W|
    (`layer`) or by |W| (`elementwise`) if asked, as float32 (the scores' type)."""
    if grad_scaling == "layer":
        grad /= weight.abs().mean().clamp_min(1e-12)
    elif grad_scaling == "elementwise":
        grad /= weight.abs().clamp_min(1e-12)
    return grad.to(torch.float32)


class _Recipe:
    """How to remake a masked weight for the backward pass: W, the scores and the config."""

    __slots__ = ("weight", "scores", "config", "version")

    def __init__(self, weight: Tensor, scores: Tensor, config: MaskConfig) -> None:
        self.weight, self.scores, self.config, self.version = weight, scores, config, scores._version

    def __call__(self) -> Tensor:
        if self.scores._version != self.version:
            raise RuntimeError("scores were modified in place between forward and backward; "
                               "their masked weight cannot be recomputed for the backward pass")
        with torch.no_grad():
            return _mask_weight(self.weight, self.scores, self.config.kind, self.config.threshold)


_recomputing: ContextVar[bool] = ContextVar("piggylab_recomputing", default=False)


def masked_weight(weight: Tensor, scores: Tensor, config: MaskConfig) -> Tensor:
    """``weight * mask(scores)`` with the straight-through gradient to `scores` only; inside
    `recompute_masked_weights`, a `RecomputedWeight`."""
    out = _StraightThroughMask.apply(weight, scores, config.kind, config.threshold, config.grad_scaling)
    if out.requires_grad and _recomputing.get():
        out = out.as_subclass(RecomputedWeight)
        out.recipe = _Recipe(weight, scores, config)
    return out


def _pack(tensor: Tensor) -> Tensor | _Recipe:
    return tensor.recipe if type(tensor) is RecomputedWeight else tensor


def _unpack(saved: Tensor | _Recipe) -> Tensor:
    return saved() if isinstance(saved, _Recipe) else saved


@contextmanager
def recompute_masked_weights() -> Iterator[None]:
    """A context in which autograd keeps no masked weight of a task in training for backward.

    A conv or linear layer keeps its weight for its backward pass; while a task trains its
    scores that weight is ``W * mask``, one more weight-sized tensor per layer besides the
    frozen W. Inside this context a masked weight is a `RecomputedWeight`: what autograd
    keeps of it is how to remake it (W and the scores, which exist anyway), and it is remade
    when backward reaches its layer, one layer at a time. `conv2d` and `linear` on it go
    further (`_MaskedLayer`): their backward computes the input's gradient first, frees the
    remade weight, then turns the weight's gradient into the scores' in place, so a layer's
    backward holds two weight-sized buffers at a time, as fine-tuning's does, not three.
    """
    token = _recomputing.set(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _recomputing.reset(token)


def _pair(value: int | tuple[int, ...]) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


class _MaskedLayer(torch.autograd.Function):
    """``conv2d`` or ``linear`` of x with a masked weight, keeping x and the recipe only.

    Backward: ``dL/dx`` with the remade masked weight, which is then freed; ``dL/dW_eff``
    into a new buffer that becomes ``dL/ds`` in place (`score_gradient_`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, masked: Tensor, scores: Tensor, bias: Tensor | None, recipe: _Recipe,
                conv: tuple | None) -> Tensor:
        ctx.save_for_backward(x)
        ctx.recipe, ctx.conv = recipe, conv
        return F.linear(x, masked, bias) if conv is None else F.conv2d(x, masked, bias, *conv)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,), recipe = ctx.saved_tensors, ctx.recipe
        need_x, _, need_scores, need_bias = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_bias = None
        if ctx.conv is None:
            if need_x:
                grad_x = grad_out @ recipe()
            flat_out = grad_out.reshape(-1, grad_out.shape[-1])
            if need_scores:
                grad_w = flat_out.t() @ x.reshape(-1, x.shape[-1])
            if need_bias:
                grad_bias = flat_out.sum(0)
        else:
            stride, padding, dilation, groups = ctx.conv
            args = (_pair(stride), _pair(padding), _pair(dilation), False, [0, 0], groups)
            if need_x:
                grad_x = torch.ops.aten.convolution_backward(
                    grad_out, x, recipe(), None, *args, [True, False, False])[0]
            if need_scores or need_bias:
                _, grad_w, grad_bias = torch.ops.aten.convolution_backward(
                    grad_out, x, recipe.weight, [recipe.weight.shape[0]] if need_bias else None, *args,
                    [False, need_scores, need_bias])
        grad_scores = score_gradient_(grad_w.mul_(recipe.weight), recipe.weight, recipe.config.grad_scaling) \
            if need_scores else None
        return grad_x, None, grad_scores, grad_bias, None, None


class RecomputedWeight(Tensor):
    """A masked weight inside `recompute_masked_weights`, carrying the `recipe` to remake it.

    ``F.conv2d`` and ``F.linear`` on it run as `_MaskedLayer`; any other function sees a
    plain tensor (and what it keeps of it for backward is remade by the saved-tensor hooks).
    """

    recipe: _Recipe

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func in _LAYER_ARGS and len(args) > 1 and type(args[1]) is cls:
                call = dict(zip(_LAYER_ARGS[func], args), **kwargs)
                conv = None if func is F.linear else tuple(call.get(k, d) for k, d in _CONV_DEFAULTS)
                # padding="same" or an unbatched image: the plain way
                if conv is None or (call["input"].dim() == 4 and not isinstance(conv[1], str)):
                    weight = call["weight"]  # detached below: attached, autograd would also run
                    # the straight-through node's backward, on a zero gradient (54 vs 45 us a layer)
                    return _MaskedLayer.apply(call["input"], weight.detach(), weight.recipe.scores,
                                              call.get("bias"), weight.recipe, conv)
            return func(*args, **kwargs)


_CONV_DEFAULTS = (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
_LAYER_ARGS = {F.linear: ("input", "weight", "bias"),
               F.conv2d: ("input", "weight", "bias", *(k for k, _ in _CONV_DEFAULTS))}


class ActiveTask:
    """Which task a network computes: one object shared by all its task-aware layers, so
    that one assignment switches them all. `merged`, when set, holds one merged weight per
    masked layer (``W * mask`` of the active, frozen task), indexed by the layer's slot."""

    __slots__ = ("name", "merged")

    def __init__(self) -> None:
        self.name: str | None = None
        self.merged: list[Tensor] | None = None


class TaskAware:
    """Mixin for a layer that behaves per task: `active` reads and writes its `state`
    (`ActiveTask`), its own until a network hands it the network's shared one."""

    state: ActiveTask

    @property
    def active(self) -> str | None:
        return self.state.name

    @active.setter
    def active(self, name: str | None) -> None:
        self.state.name = name


class MaskedWeight(TaskAware, nn.Module):
    """Parametrization of one frozen weight by one mask per task.

    Registered with `torch.nn.utils.parametrize.register_parametrization`, so the frozen
    weight lives at ``module.parametrizations.<name>.original`` and ``module.<name>`` reads
    ``original * mask`` for the active task. A task being trained has float `scores`
    (``self.scores[task]``); `freeze` replaces them by the thresholded `mask`
    (``self.masks.<task>``, bool or int8), which is all a trained task keeps.
    With no active task the weight is the original one. For a fixed mask the weight is
    ``state.merged[slot]`` when the network has merged it (`piggylab.switching`), else it is
    computed at each call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scores = nn.ParameterDict()
        self.masks = nn.Module()
        self.configs: dict[str, MaskConfig] = {}
        self.state = ActiveTask()
        self.slot = 0

    # -- tasks -----------------------------------------------------------------------
    def add_task(self, task: str, original: Tensor, config: MaskConfig) -> None:
        self.configs[task] = config
        self.scores[task] = nn.Parameter(init_scores(original, config).to(original.device))

    def remove_task(self, task: str) -> None:
        self.configs.pop(task)
        if task in self.scores:
            del self.scores[task]
        if hasattr(self.masks, task):
            delattr(self.masks, task)

    def mask(self, task: str) -> Tensor:
        """The task's current mask (bool for binary, int8 for ternary), without gradient."""
        if task in self.scores:
            config = self.configs[task]
            return threshold_scores(self.scores[task].detach(), config.kind, config.threshold)
        return self.masks.get_buffer(task)

    def set_mask(self, task: str, mask: Tensor, config: MaskConfig) -> None:
        """Fix the task's mask (dropping its scores, if any)."""
        self.configs[task] = config
        if task in self.scores:
            del self.scores[task]
        self.masks.register_buffer(task, mask)

    def freeze(self, task: str) -> None:
        """Keep only the thresholded mask of a trained task (1 bit per weight, paper §3)."""
        if task in self.scores:
            self.set_mask(task, self.mask(task), self.configs[task])

    # -- the parametrization ---------------------------------------------------------
    def merged_weight(self) -> Tensor | None:
        """The weight of the active task if the network has merged it (a frozen task), else None."""
        merged = self.state.merged
        return None if merged is None else merged[self.slot]

    def forward(self, original: Tensor) -> Tensor:
        merged = self.merged_weight()
        if merged is not None:
            return merged
        task = self.state.name
        if task is None:
            return original
        if task in self.scores:
            return masked_weight(original, self.scores[task], self.configs[task])
        with torch.no_grad():
            return apply_mask(original, self.masks._buffers[task])
