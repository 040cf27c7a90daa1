"""Task switching in two kernels: a network's masked weights laid out in one flat buffer.

A network that serves many frozen tasks switches between them often (serving, evaluation,
the notebooks' task loops). Layer by layer, a switch costs one select kernel and some
Python per layer, and on a CPU the select ``where(mask, W, 0)`` itself runs at a third of
the speed of a copy, and slower still as the mask's zeros grow (the paper's masks, §5, have
4.5-34% zeros): it branches per element. Here:

- the frozen weights of every masked layer are views into one flat tensor, and so are the
  merged weights ``W * mask`` of the active frozen task;
- a frozen task's per-layer masks (its masks of record, in `piggylab.masks.MaskedWeight`)
  are made views into one flat mask of that task, the first time the task is merged;
- a switch is then one pass over the flat tensors: on a CPU, the mask's bytes converted to
  0./1. floats into the merged buffer and multiplied by the weights in place (two vectorised
  kernels whose cost does not depend on the zeros); elsewhere one ``where``.

`FlatWeights` is how `PiggybackNet` makes a frozen task active; it holds no tasks of its
own (those are `piggylab.network`'s).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _views(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """`flat` cut into tensors shaped like `like`, in order (views, no copy)."""
    return [part.view(w.shape) for part, w in zip(flat.split([w.numel() for w in like]), like)]


def _concatenated(tensors: list[Tensor]) -> Tensor:
    """A new flat tensor holding the values of `tensors`, in order (no autograd history)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _check_one_device_and_dtype(weights: list[Tensor]) -> None:
    """One flat tensor has one device and one dtype: refuse weights that do not."""
    kinds = {(w.device, w.dtype) for w in weights}
    if len(kinds) > 1:
        raise ValueError(f"all masked weights must share one device and dtype; found {sorted(map(str, kinds))}")


def flat_copies(weights: list[Tensor]) -> list[nn.Parameter]:
    """Frozen copies of `weights` that are consecutive views of one new flat tensor: given to
    `copy.deepcopy` as its memo, a network is copied straight into the flat layout (no
    weight is held three times, as copying then flattening would)."""
    if not weights:
        return []
    _check_one_device_and_dtype(weights)
    return [nn.Parameter(view, requires_grad=False) for view in _views(_concatenated(weights), weights)]


def _flat_base(tensors: list[Tensor]) -> Tensor | None:
    """The flat tensor of which `tensors` are consecutive views, in order, if there is one."""
    first = tensors[0].detach()
    offset = first.storage_offset()
    for w in tensors:
        if w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() \
                or w.storage_offset() != offset or not w.is_contiguous():
            return None
        offset += w.numel()
    return first.as_strided((offset - first.storage_offset(),), (1,), first.storage_offset())


class FlatWeights:
    """The frozen weights of a network's masked layers as views into one flat tensor.

    Weights that already are consecutive views of one tensor (`flat_copies`) are taken as
    they are; otherwise they are copied once into a new flat tensor and each parameter is
    re-pointed (``param.data``) at its view, so parameters, state dicts and hooks see the
    same tensors as before. A device or dtype change of the network gives its parameters
    new storage: `intact` then turns false and the owner builds a new `FlatWeights`.
    """

    def __init__(self, weights: list[nn.Parameter]) -> None:
        _check_one_device_and_dtype(weights)
        self._weights = weights
        self.flat = flatten(weights)
        self._pointers = [w.data_ptr() for w in weights]
        self.merged: Tensor | None = None
        self.merged_views: list[Tensor] | None = None
        self.merged_task: tuple[str, int] | None = None  # (task, version of the weights)
        self._masks: dict[str, Tensor] = {}  # per task, the flat mask its layers' masks are views of

    def views(self, flat: Tensor) -> list[Tensor]:
        """`flat` cut into tensors shaped like the weights, in order (views, no copy)."""
        return _views(flat, self._weights)

    def intact(self) -> bool:
        """Whether every weight still is its view of `flat` (not moved, cast or replaced)."""
        return all(w.data_ptr() == p for w, p in zip(self._weights, self._pointers))

    def version(self) -> int:
        """Grows with every in-place change of any weight (parameters count their own)."""
        return sum(w._version for w in self._weights)

    def forget(self, task: str) -> None:
        """Drop what is kept of a task whose masks changed or which was removed."""
        self._masks.pop(task, None)
        if self.merged_task is not None and self.merged_task[0] == task:
            self.merged_task = None

    def release(self) -> None:
        """Free the merged weights (while a task trains they would be a stale copy)."""
        self.merged, self.merged_views, self.merged_task = None, None, None

    def merge(self, task: str, masks: Callable[[], list[Tensor]]) -> None:
        """Make `merged` (and `merged_views`, one per layer) the weights of `task`, whose
        per-layer masks (bool or int8) `masks()` returns (asked for the first time a task is
        merged only). Nothing is computed if they already are that task's, for the current
        weights."""
        key = (task, self.version())
        if self.merged_task == key:
            return
        if task not in self._masks:
            self._masks[task] = flatten(masks())
        mask = self._masks[task]
        if self.merged is None:
            self.merged = torch.empty_like(self.flat)
            self.merged_views = self.views(self.merged)
        masked_copy(self.merged, self.flat, mask, via_floats=self.flat.device.type == "cpu")
        self.merged_task = key


@torch.no_grad()
def masked_copy(out: Tensor, weights: Tensor, mask: Tensor, *, via_floats: bool) -> Tensor:
    """``out = weights * mask`` for a bool (binary) or int8 (ternary) `mask`.

    `via_floats` (what a CPU gets): the mask's values converted to floats straight into `out`,
    then multiplied by `weights` in place, two vectorised kernels without branches (a CPU's
    `where` branches per element). Otherwise one kernel: `where` for a bool mask, `mul` for
    an int8 one.
    """
    if via_floats:
        return out.copy_(mask.view(torch.uint8) if mask.dtype == torch.bool else mask).mul_(weights)
    if mask.dtype == torch.bool:
        return torch.where(mask, weights, weights.new_zeros(()), out=out)
    return torch.mul(weights, mask, out=out)


def flatten(tensors: list[Tensor]) -> Tensor:
    """One flat tensor that `tensors` are consecutive views of: the one they already are views
    of, or a new one, to which each tensor is then re-pointed (``tensor.data``), so that the
    values are held once and every parameter or buffer object stays the same."""
    flat = _flat_base(tensors)
    if flat is None:
        flat = _concatenated(tensors)
        for tensor, view in zip(tensors, _views(flat, tensors)):
            tensor.data = view
    return flat
