"""The masked layer: one frozen weight, seen by every task through that task's own mask (paper §3).

What this is, top to bottom:

1. `MaskConfig`, `init_scores`, `threshold_scores`: how a task's mask is made. Each weight W
   has a real-valued *score* s; the mask is ``s > tau`` (binary) or {-1, 0, 1} (ternary); the
   scores start by one of the paper's init schemes.
2. `pack_mask` / `unpack_mask`: a frozen mask in 1 bit per weight (ternary: 2 bits), the form
   a trained task keeps in memory and in its task file; `unpack_mask_into` unpacks one
   into a weight-sized buffer (a switch's merged weight): no unpacked mask is kept.
3. Two autograd Functions, both with the straight-through gradient ``dL/ds = dL/dW_eff * W``:
   `MaskedLayerFunction` computes a whole conv or linear layer on ``W * mask(s)`` and remakes
   that masked weight in backward instead of keeping it (so training a mask costs the memory
   of fine-tuning, not one weight copy more); `StraightThroughMask` gives the masked weight
   itself, for the one case below where a module reads its weight internally.
4. `TaskMasks`: every task's mask over one frozen weight: float `scores` while a task trains,
   a `packed` mask once it is frozen, and `merged` = ``W * mask`` of the active frozen task.
5. The wrappers that put it on a layer: `MaskedConv2d` and `MaskedLinear` hold the frozen
   layer as ``base_layer`` and a `TaskMasks` as ``masks``, and compute the layer themselves.
   `MaskedAttention` wraps an `nn.MultiheadAttention`, which reads its projection weights
   inside its own forward: there, and only there, the `TaskMasks` are registered as
   `torch.nn.utils.parametrize` parametrizations of those weights.
6. ``samples_apart``: a switch of each layer under which it computes each sample of a batch
   exactly as a batch of that sample alone (CPU kernels are not batch-invariant: a linear
   layer or a convolution rounds a sample differently in a batch than alone). The network
   sets it while it serves a batch that mixes tasks (`piggylab.tasks`).

What this is not: it knows nothing of networks, task names beyond dictionary keys, training
loops or files. Which task is active is set from outside (`TaskMasks.activate`), by the
network that owns the layers (`piggylab.piggyback`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .checks import check_choice, finite_number

MASK_KINDS = ("binary", "ternary")
INIT_SCHEMES = ("constant", "uniform", "weight")
GRAD_SCALINGS = ("none", "layer", "elementwise")

DEFAULT_THRESHOLD = 5e-3
"""tau of the reference code: a score above it keeps its weight."""

DEFAULT_SCALE = {"constant": 1e-2, "uniform": 1e-2, "weight": 1.0}
"""Per init scheme: the constant, the half-width of the uniform range, or the multiplier of
mean |W| (the reference's 1e-2 with tau 5e-3 starts from an all-ones mask)."""


# -- 1. how a mask is made ----------------------------------------------------------------------
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
        finite_number(self.threshold, "threshold")
        if self.scale is not None:
            finite_number(self.scale, "scale", positive=True)

    @property
    def init_scale(self) -> float:
        return DEFAULT_SCALE[self.init] if self.scale is None else float(self.scale)

    @property
    def bits(self) -> int:
        """Bits per weight of the frozen mask: 1 (binary) or 2 (ternary)."""
        return 1 if self.kind == "binary" else 2


def init_scores(weight: Tensor, config: MaskConfig) -> Tensor:
    """New float32 scores for `weight` by the paper's schemes (§3, "initialization").

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


def masked_value(weight: Tensor, scores: Tensor, config: MaskConfig) -> Tensor:
    """``W * mask(scores)`` as a new tensor, outside autograd. Binary: the 0/1 mask is written
    straight into the output and multiplied by W in place, two vectorised passes."""
    with torch.no_grad():
        if config.kind == "binary":
            return torch.gt(scores, config.threshold, out=torch.empty_like(weight)).mul_(weight)
        return weight * threshold_scores(scores, config.kind, config.threshold)


def score_gradient_(grad: Tensor, weight: Tensor, grad_scaling: str) -> Tensor:
    """``dL/ds`` from ``grad = dL/dW_eff * W``, in place: divided by the layer's mean |W|
    (`layer`) or by |W| (`elementwise`) if asked, as float32 (the scores' type)."""
    if grad_scaling == "layer":
        grad /= weight.abs().mean().clamp_min(1e-12)
    elif grad_scaling == "elementwise":
        grad /= weight.abs().clamp_min(1e-12)
    return grad.to(torch.float32)


# -- 2. a frozen mask in 1 bit per weight ----------------------------------------------------------
_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)   # binary: first weight in the high bit (np.packbits)
_CODE_SHIFTS = torch.arange(0, 8, 2, dtype=torch.uint8)    # ternary: 2-bit codes, first weight in the low bits


def pack_mask(mask: Tensor, kind: str) -> Tensor:
    """A mask as uint8 bytes: binary 8 weights per byte (`numpy.packbits`' order), ternary 4
    (codes ``m + 1`` in 2 bits, first weight lowest). The last byte is padded with zeros."""
    if kind == "binary":
        bits = mask.reshape(-1).to(torch.uint8)
        bits = F.pad(bits, (0, -bits.numel() % 8)).view(-1, 8)
        return (bits << _BIT_SHIFTS.to(bits.device)).sum(1, dtype=torch.uint8)
    codes = (mask.reshape(-1).to(torch.int8) + 1).to(torch.uint8)
    codes = F.pad(codes, (0, -codes.numel() % 4)).view(-1, 4)
    return (codes << _CODE_SHIFTS.to(codes.device)).sum(1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, kind: str, shape: tuple[int, ...]) -> Tensor:
    """The mask `pack_mask` packed: uint8 0/1 for binary (multiplies like a bool mask), int8
    {-1, 0, 1} for ternary, of `shape`."""
    count = math.prod(shape)
    if kind == "binary":
        bits = (packed.unsqueeze(1) >> _BIT_SHIFTS.to(packed.device)) & 1
        return bits.view(-1)[:count].view(shape)
    codes = (packed.unsqueeze(1) >> _CODE_SHIFTS.to(packed.device)) & 3
    return (codes.view(-1)[:count].to(torch.int8) - 1).view(shape)


_UNPACK_TABLES: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


def _unpack_table(kind: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Row b: the mask values byte b packs (8 binary or 4 ternary), as `dtype` on `device`."""
    key = (kind, dtype, device)
    if key not in _UNPACK_TABLES:
        _UNPACK_TABLES[key] = unpack_mask(torch.arange(256, dtype=torch.uint8), kind,
                                          (256, 8 if kind == "binary" else 4)).to(dtype=dtype, device=device)
    return _UNPACK_TABLES[key]


def unpack_mask_into(out: Tensor, packed: Tensor, kind: str) -> Tensor:
    """`out` (contiguous) filled with the mask `pack_mask` packed, as values of its own dtype:
    0/1 (binary) or -1/0/1 (ternary). A binary mask on the CPU goes through numpy's SIMD
    `unpackbits` (a byte per weight for a moment, then converted into `out`); elsewhere one
    table lookup per packed byte writes `out` directly (`benchmarks/RESULTS.md` compares them)."""
    if kind == "binary" and out.device.type == "cpu" and packed.device.type == "cpu":
        bits = np.unpackbits(packed.numpy(), count=out.numel())
        return out.copy_(torch.from_numpy(bits).view(out.shape))
    return unpack_by_table(out, packed, kind)


def unpack_by_table(out: Tensor, packed: Tensor, kind: str) -> Tensor:
    """`unpack_mask_into` by one table lookup per packed byte, on any device."""
    table = _unpack_table(kind, out.dtype, out.device)
    per_byte = table.shape[1]
    flat = out.view(-1)
    full = flat.numel() // per_byte
    torch.index_select(table, 0, packed[:full].int(), out=flat[: full * per_byte].view(full, per_byte))
    if full * per_byte < flat.numel():  # the last, partly filled byte
        flat[full * per_byte :] = table[packed[full].long()][: flat.numel() - full * per_byte]
    return out


def packed_size(numel: int, kind: str) -> int:
    """Bytes of a packed mask of `numel` weights."""
    per_byte = 8 if kind == "binary" else 4
    return -(-numel // per_byte)


# -- 3. the straight-through gradient ---------------------------------------------------------------
class StraightThroughMask(torch.autograd.Function):
    """``W * mask(s)`` forward; the identity through the threshold backward (paper §3).

    Saves only W, the frozen weight itself (nothing new): ``dL/ds = dL/dW_eff * W`` does not
    need the mask. Used where a module reads its weight itself (`MaskedAttention`).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, config: MaskConfig) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.grad_scaling = config.grad_scaling
        return masked_value(weight, scores, config)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (weight,) = ctx.saved_tensors
        return None, score_gradient_(grad_output * weight, weight, ctx.grad_scaling), None


class MaskedLayerFunction(torch.autograd.Function):
    """A conv2d or linear layer of x on ``W * mask(s)``, straight through to s (paper §3).

    Keeps x, W and s for backward (which exist anyway), not the masked weight: backward
    remakes it, gets ``dL/dx`` and ``dL/dW_eff`` from it (a conv's both from one
    `convolution_backward` call: the same numbers as a call each, a little faster on CPU),
    frees it, then turns ``dL/dW_eff`` into ``dL/ds`` in place. So a layer's backward holds two
    weight-sized buffers at a time, as fine-tuning's does. Under autocast the layer computes in
    the autocast type (forward and backward alike); the scores' gradient is float32.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, scores: Tensor, bias: Tensor | None, config: MaskConfig,
                conv: tuple | None) -> Tensor:
        masked = masked_value(weight, scores, config)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, masked = x.to(dtype), masked.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            out = F.linear(x, masked, bias) if conv is None else F.conv2d(x, masked, bias, *conv)
        ctx.save_for_backward(x, weight, scores)
        ctx.config, ctx.conv, ctx.has_bias = config, conv, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, scores = ctx.saved_tensors
        need_x, _, need_scores, need_bias = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_scores = grad_bias = None
        if ctx.conv is not None and (need_x or need_scores):
            stride, padding, dilation, groups = ctx.conv
            masked = masked_value(weight, scores, ctx.config).to(grad_out.dtype)
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out, x, masked, None, stride, padding, dilation, False, (0, 0), groups,
                (need_x, need_scores, False))
            del masked
        elif ctx.conv is None:
            if need_x:
                grad_x = grad_out @ masked_value(weight, scores, ctx.config).to(grad_out.dtype)
            if need_scores:
                grad_w = grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        if need_scores:
            grad_scores = score_gradient_(grad_w.to(torch.float32).mul_(weight), weight, ctx.config.grad_scaling)
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.sum(tuple(range(grad_out.dim() - 1))) if ctx.conv is None \
                else grad_out.sum((0, 2, 3))
        return grad_x, None, grad_scores, grad_bias, None, None


# -- 4. every task's mask over one frozen weight --------------------------------------------------
class BufferDict(nn.Module):
    """Named buffers (they move with the module and are in its state dict), by string key."""

    def __getitem__(self, key: str) -> Tensor:
        return self._buffers[key]

    def __setitem__(self, key: str, value: Tensor) -> None:
        self.register_buffer(key, value)

    def __delitem__(self, key: str) -> None:
        del self._buffers[key]

    def __contains__(self, key: object) -> bool:
        return key in self._buffers

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)


class TaskMasks(nn.Module):
    """Every task's mask over one frozen weight of shape `shape`.

    - A task in training has float ``scores[task]`` (trained by the straight-through gradient).
    - `freeze` replaces them by ``packed[task]``: the thresholded mask at 1 bit per weight
      (2 for ternary), all a trained task keeps (§3).
    - `activate` makes one task the one computed. For a frozen task it computes ``merged``,
      ``W * mask``, once (reusing its buffer from switch to switch): the layer then reads it
      directly, so a frozen task runs as fast as the plain layer.

    Registered as a parametrization (`MaskedAttention`), its `forward` is the active task's weight.
    """

    def __init__(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.scores = nn.ParameterDict()
        self.packed = BufferDict()
        self.register_buffer("merged", None, persistent=False)
        self.active: str | None = None
        self.config: MaskConfig | None = None  # the active task's (the network holds every task's)

    # -- tasks -------------------------------------------------------------------------------
    def add_task(self, task: str, config: MaskConfig, weight: Tensor) -> None:
        """Fresh scores for `task` (`init_scores`)."""
        self.scores[task] = nn.Parameter(init_scores(weight, config))

    def remove_task(self, task: str) -> None:
        if task in self.scores:
            del self.scores[task]
        if task in self.packed:
            del self.packed[task]
        if self.active == task:
            self.activate(None, None, None)

    def mask(self, task: str, config: MaskConfig) -> Tensor:
        """The task's mask, without gradient: bool (binary) or int8 (ternary)."""
        if task in self.scores:
            return threshold_scores(self.scores[task].detach(), config.kind, config.threshold)
        mask = unpack_mask(self.packed[task], config.kind, self.shape)
        return mask.bool() if config.kind == "binary" else mask

    def freeze(self, task: str, config: MaskConfig) -> None:
        """Keep only the thresholded mask of a trained task, packed (1 bit per weight, §3)."""
        self.set_packed(task, pack_mask(self.mask(task, config), config.kind))

    def set_packed(self, task: str, packed: Tensor) -> None:
        """Fix the task's mask from its packed bytes (`pack_mask`, a task file's form), dropping
        its scores. The owner activates the task again if it is the active one."""
        if task in self.scores:
            del self.scores[task]
        self.packed[task] = packed

    # -- the active task ---------------------------------------------------------------------
    def activate(self, task: str | None, config: MaskConfig | None, weight: Tensor | None) -> None:
        """Compute `task` from now on (None: the plain weight). A frozen task's ``W * mask`` is
        merged into ``merged`` now, reusing its buffer; for a task with scores (or none)
        ``merged`` is freed, so no stale copy of the weight is held while a task trains."""
        self.active, self.config = task, config
        if task is None or task in self.scores:
            self.merged = None
            return
        with torch.no_grad():
            merged = self.merged
            if merged is None or (merged.shape, merged.device, merged.dtype) != (weight.shape, weight.device, weight.dtype):
                self.merged = merged = torch.empty_like(weight)
            if merged.is_contiguous():  # the mask unpacked straight into the buffer, then W multiplied in
                unpack_mask_into(merged, self.packed[task], config.kind).mul_(weight)
            else:
                torch.mul(weight, unpack_mask(self.packed[task], config.kind, self.shape), out=merged)

    def training_scores(self) -> Tensor | None:
        """The active task's scores if they are being trained now (they need a gradient)."""
        if self.active not in self.scores or not torch.is_grad_enabled():
            return None
        scores = self.scores[self.active]
        return scores if scores.requires_grad else None

    def weight(self, original: Tensor) -> Tensor:
        """The active task's weight: merged (frozen task), masked with the straight-through
        gradient (scores being trained), masked without one, or `original` (no task)."""
        if self.merged is not None:
            return self.merged
        if self.active is None:
            return original
        scores = self.training_scores()
        if scores is not None:
            return StraightThroughMask.apply(original, scores, self.config)
        if self.active in self.scores:
            return masked_value(original, self.scores[self.active], self.config)
        with torch.no_grad():
            return original * unpack_mask(self.packed[self.active], self.config.kind, self.shape)

    forward = weight

    def extra_repr(self) -> str:
        return f"shape={self.shape}, training={list(self.scores)}, frozen={list(self.packed)}, active={self.active!r}"


# -- 5. the layers ----------------------------------------------------------------------------------
class MaskedLayer(nn.Module):
    """A frozen layer (``base_layer``) whose weights each task sees through its own masks.

    `masked_weights` names them: ``{attribute: (TaskMasks, frozen weight)}``. `unwrap` gives a
    new plain layer like the base one, computing with the active task's weights (baked in).
    """

    base_layer: nn.Module
    samples_apart: bool = False
    """Compute each sample of a batch exactly as alone (section 6); set by the owning network."""

    def masked_weights(self) -> dict[str, tuple[TaskMasks, Tensor]]:
        raise NotImplementedError

    def unwrap(self) -> nn.Module:
        raise NotImplementedError


def _conv_arguments(conv: nn.Conv2d) -> tuple:
    """(stride, padding, dilation, groups) of `conv` with numeric padding, as `F.conv2d` and
    `convolution_backward` take them."""
    padding = conv.padding
    if conv.padding_mode != "zeros":
        raise ValueError(f"cannot mask {conv}: only padding_mode='zeros' is supported")
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        if any(d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size)):
            raise ValueError(f"cannot mask {conv}: padding='same' with an even kernel pads unevenly")
        padding = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.stride), tuple(padding), tuple(conv.dilation), conv.groups


class _MaskedWeightLayer(MaskedLayer):
    """What `MaskedConv2d` and `MaskedLinear` share: one `TaskMasks` over ``base_layer.weight``,
    and a forward that computes the layer on the active task's weight."""

    conv: tuple | None = None  # (stride, padding, dilation, groups) of a conv; None: linear

    def __init__(self, base_layer: nn.Module, make_masks: Callable[[tuple[int, ...]], nn.Module] = TaskMasks) -> None:
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.masks = make_masks(tuple(base_layer.weight.shape))

    def masked_weights(self) -> dict[str, tuple[TaskMasks, Tensor]]:
        return {"weight": (self.masks, self.base_layer.weight)}

    def compute(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer on `x` with `weight` (and the base layer's bias); with ``samples_apart``,
        each sample exactly as alone."""
        bias = self.base_layer.bias
        if self.conv is None:
            if self.samples_apart and x.dim() > 1 and len(x) > 1:
                return each_sample(lambda part: F.linear(part, weight, bias), x)
            return F.linear(x, weight, bias)
        if self.samples_apart and x.dim() == 4 and len(x) > 1:
            return conv2d_samples_apart(x, weight, bias, self.conv)
        return F.conv2d(x, weight, bias, *self.conv)

    def forward(self, x: Tensor) -> Tensor:
        masks, base = self.masks, self.base_layer
        if masks.merged is not None:  # a frozen task: its merged weight, as fast as the plain layer
            return self.compute(x, masks.merged)
        scores = masks.training_scores()
        if scores is None or self.samples_apart:  # (apart: plain autograd, no fused layer)
            return self.compute(x, masks.weight(base.weight))
        unbatched = self.conv is not None and x.dim() == 3
        out = MaskedLayerFunction.apply(x.unsqueeze(0) if unbatched else x, base.weight, scores, base.bias,
                                        masks.config, self.conv)
        return out.squeeze(0) if unbatched else out

    def unwrap(self) -> nn.Module:
        plain = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            plain.weight.copy_(self.masks.weight(self.base_layer.weight))
        return plain


class MaskedConv2d(_MaskedWeightLayer):
    """An `nn.Conv2d` whose weight each task masks (`TaskMasks`); the conv itself is frozen."""

    def __init__(self, base_layer: nn.Conv2d, make_masks: Callable[[tuple[int, ...]], nn.Module] = TaskMasks) -> None:
        super().__init__(base_layer, make_masks)
        self.conv = _conv_arguments(base_layer)


class MaskedLinear(_MaskedWeightLayer):
    """An `nn.Linear` whose weight each task masks (`TaskMasks`); the layer itself is frozen."""


def attention_weights(attention: nn.MultiheadAttention) -> list[str]:
    """The projection weights an `nn.MultiheadAttention` reads inside its forward."""
    inputs = ["in_proj_weight"] if attention._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    return [*inputs, "out_proj.weight"]


class MaskedAttention(MaskedLayer):
    """An `nn.MultiheadAttention` whose projection weights each task masks.

    The attention module reads those weights inside its own forward, so they cannot be passed
    in: each one gets a `TaskMasks` registered as a `torch.nn.utils.parametrize`
    parametrization, the one place the lab uses one. The masked weight of a training task
    is then `StraightThroughMask`'s, which the module keeps for its backward.
    """

    def __init__(self, base_layer: nn.MultiheadAttention,
                 make_masks: Callable[[tuple[int, ...]], nn.Module] = TaskMasks) -> None:
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.attributes = attention_weights(base_layer)
        for attr in self.attributes:
            owner, name = self._owner(attr)
            parametrize.register_parametrization(owner, name, make_masks(tuple(getattr(owner, name).shape)))

    def _owner(self, attr: str) -> tuple[nn.Module, str]:
        path, _, name = attr.rpartition(".")
        return (self.base_layer.get_submodule(path) if path else self.base_layer), name

    def masked_weights(self) -> dict[str, tuple[TaskMasks, Tensor]]:
        weights = {}
        for attr in self.attributes:
            owner, name = self._owner(attr)
            parametrization = owner.parametrizations[name]
            weights[attr] = (parametrization[0], parametrization.original)
        return weights

    def forward(self, *args, **kwargs):
        if self.samples_apart:
            return self._samples_apart(*args, **kwargs)
        return self.base_layer(*args, **kwargs)

    def _samples_apart(self, *args, **kwargs):
        """The attention of each sample of a batch alone (``samples_apart``), joined again."""
        call = _ATTENTION_SIGNATURE.bind(self.base_layer, *args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        dim = 0 if self.base_layer.batch_first else 1
        query = given["query"]
        if query.dim() < 3 or query.shape[dim] < 2:
            return self.base_layer(*args, **kwargs)
        heads = self.base_layer.num_heads
        outputs, weights = [], []
        for i in range(query.shape[dim]):
            one = {name: value for name, value in given.items() if name != "self"}
            parts: dict[int, Tensor] = {}  # self-attention passes one tensor thrice: keep it one
            for name in ("query", "key", "value"):
                one[name] = parts.setdefault(id(given[name]), given[name].narrow(dim, i, 1))
            if given["key_padding_mask"] is not None:
                one["key_padding_mask"] = given["key_padding_mask"][i : i + 1]
            mask = given["attn_mask"]
            if mask is not None and mask.dim() == 3:
                one["attn_mask"] = mask[i * heads : (i + 1) * heads]
            output, weight = self.base_layer(**one)
            outputs.append(output)
            weights.append(weight)
        return torch.cat(outputs, dim), None if weights[0] is None else torch.cat(weights)

    def unwrap(self) -> nn.MultiheadAttention:
        """A new `nn.MultiheadAttention` of the same settings holding the active task's weights."""
        base = self.base_layer
        weights = self.masked_weights()
        device = next(iter(weights.values()))[1].device
        plain = nn.MultiheadAttention(base.embed_dim, base.num_heads, dropout=base.dropout,
                                      bias=base.in_proj_bias is not None, add_bias_kv=base.bias_k is not None,
                                      add_zero_attn=base.add_zero_attn, kdim=base.kdim, vdim=base.vdim,
                                      batch_first=base.batch_first, device=device)
        state = {k: v for k, v in base.state_dict().items() if "parametrizations." not in k}
        with torch.no_grad():
            state.update({attr: masks.weight(original) for attr, (masks, original) in weights.items()})
        plain.load_state_dict(state)
        return plain


_ATTENTION_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def wrap_layer(module: nn.Module, make_masks: Callable[[tuple[int, ...]], nn.Module] = TaskMasks
               ) -> MaskedLayer | None:
    """The masked wrapper of `module` if Piggyback masks it, else None: every `nn.Conv2d`,
    `nn.Linear` and `nn.MultiheadAttention` (paper §3: every conv and fully-connected layer).
    `make_masks(shape)` makes the per-task view of each weight (default `TaskMasks`)."""
    if isinstance(module, nn.MultiheadAttention):
        return MaskedAttention(module, make_masks)
    if isinstance(module, nn.Conv2d):
        return MaskedConv2d(module, make_masks)
    if isinstance(module, nn.Linear):
        return MaskedLinear(module, make_masks)
    return None


# -- 6. a batch computed as its samples alone ------------------------------------------------------
# With ``samples_apart`` set, a layer computes each sample of a batch exactly, bit for bit, as it
# computes a batch of that sample alone: convolutions run batched on the kernel a single sample
# gets (`conv2d_samples_apart`); linear layers and attention, whose matrix products round
# differently with the number of rows, run sample by sample. Elementwise and per-sample layers
# (batchnorm in eval mode, activations, pooling, layer norm) need nothing. A training task's
# layers compute through plain autograd then (no fused layer): the same gradients, more memory.

_BATCH_INVARIANT_CONVS = ("Slow2d", "Mkldnn")
"""CPU convolution kernels that compute each sample of a batch as a batch of it alone:
`Slow2d` by construction (one matrix product per sample, of the same shape whatever the
batch), oneDNN's (`Mkldnn`) as measured (`tests/test_many_tasks.py` checks it on every
run). PyTorch picks between them by the batch size, among other things, so a sample alone and
the same sample in a batch can meet different kernels: `conv2d_samples_apart` makes the batch
meet the sample's."""


def each_sample(layer: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """`layer` on each sample of `x` (along dim 0) alone, the results joined in order."""
    return torch.cat([layer(part) for part in x.split(1)])


@contextmanager
def _only_kernel(mkldnn: bool) -> Iterator[None]:
    """NNPACK's convolutions off, oneDNN's too unless `mkldnn`, then as they were."""
    onednn = torch.backends.mkldnn
    with ExitStack() as stack:
        stack.enter_context(torch.backends.nnpack.flags(enabled=False))
        if not mkldnn:
            stack.enter_context(onednn.flags(enabled=False, deterministic=onednn.deterministic,
                                             allow_tf32=onednn.allow_tf32, fp32_precision=onednn.fp32_precision))
        yield


def _conv_backend(x: Tensor, weight: Tensor, bias: Tensor | None, conv: tuple) -> str:
    stride, padding, dilation, groups = conv
    return torch._C._select_conv_backend(x, weight, bias, list(stride), list(padding), list(dilation), False,
                                          [0, 0], groups, None).name


def conv2d_samples_apart(x: Tensor, weight: Tensor, bias: Tensor | None, conv: tuple) -> Tensor:
    """``F.conv2d(x, weight, bias, *conv)`` with each sample exactly as ``F.conv2d`` gives it
    alone: one batched call on the kernel a single sample gets, where that kernel is
    batch-invariant (`_BATCH_INVARIANT_CONVS`) and the batch can be made to meet it (a sample
    on `Slow2d` keeps the batch off oneDNN and NNPACK); else sample by sample."""
    alone = _conv_backend(x[:1], weight, bias, conv)
    if alone in _BATCH_INVARIANT_CONVS:
        with _only_kernel(mkldnn=alone == "Mkldnn"):
            if _conv_backend(x, weight, bias, conv) == alone:
                return F.conv2d(x, weight, bias, *conv)
    return each_sample(lambda part: F.conv2d(part, weight, bias, *conv), x)
