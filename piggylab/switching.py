"""Task switching in two kernels: a network's masked weights laid out in one flat buffer.

A network that serves many frozen tasks switches between them often (serving, evaluation,
the notebooks' task loops). Layer by layer, a switch costs one select kernel and some
Python per layer, and on a CPU the select ``where(mask, W, 0)`` itself runs at a third of
the speed of a copy, and slower still as the mask's zeros grow (the paper's masks, §5, have
4.5-34% zeros). Here:

- the frozen weights of every masked layer are views into one flat tensor, and so are the
  merged weights ``W * mask`` of the active frozen task;
- for switching, a task's mask is kept as the sorted positions it turns off (and, for a
  ternary mask, the positions it negates): 8 bytes per masked-off weight;
- a switch is one copy of the flat weights and one `index_fill_` of those positions, close
  to the memory-bandwidth floor of a plain copy when few weights are off.

`FlatWeights` is how `PiggybackNet` makes a frozen task active; it holds no tasks of its
own (those are `piggylab.network`'s) and no masks of record (the per-layer buffers of
`piggylab.masks.MaskedWeight`, from which it derives the positions it keeps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _positions(masks: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """Flat positions (int64, sorted) that a task's masks turn off, and those they negate,
    found layer by layer (a bool mask is never promoted to a wider type)."""
    off, negated, start = [], [], 0
    for mask in masks:
        flat = mask.reshape(-1)
        off.append(((~flat) if flat.dtype == torch.bool else flat == 0).nonzero().squeeze(1).add_(start))
        if flat.dtype != torch.bool:
            negated.append((flat < 0).nonzero().squeeze(1).add_(start))
        start += flat.numel()
    negated_all = torch.cat(negated) if negated else None
    return torch.cat(off), (negated_all if negated_all is not None and negated_all.numel() else None)


def _views(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """`flat` cut into tensors shaped like `like`, in order (views, no copy)."""
    return [part.view(w.shape) for part, w in zip(flat.split([w.numel() for w in like]), like)]


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
    with torch.no_grad():
        flat = torch.cat([w.detach().reshape(-1) for w in weights])
    return [nn.Parameter(view, requires_grad=False) for view in _views(flat, weights)]


def _flat_base(weights: list[Tensor]) -> Tensor | None:
    """The flat tensor of which `weights` are consecutive views, in order, if there is one."""
    first = weights[0].detach()
    offset = first.storage_offset()
    for w in weights:
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
        flat = _flat_base(weights)
        if flat is None:
            with torch.no_grad():
                flat = torch.cat([w.detach().reshape(-1) for w in weights])
            for weight, view in zip(weights, self.views(flat)):
                weight.data = view
        self.flat = flat
        self._pointers = [w.data_ptr() for w in weights]
        self.merged: Tensor | None = None
        self.merged_views: list[Tensor] | None = None
        self.merged_task: tuple[str, int] | None = None  # (task, version of the weights)
        self._positions: dict[str, tuple[Tensor, Tensor | None]] = {}

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
        self._positions.pop(task, None)
        if self.merged_task is not None and self.merged_task[0] == task:
            self.merged_task = None

    def release(self) -> None:
        """Free the merged weights (while a task trains they would be a stale copy)."""
        self.merged, self.merged_views, self.merged_task = None, None, None

    def merge(self, task: str, masks: Callable[[], list[Tensor]]) -> None:
        """Make `merged` (and `merged_views`, one per layer) the weights of `task`, whose
        per-layer masks `masks()` returns; it is called the first time a task is merged only.
        Nothing is computed if they already are that task's, for the current weights."""
        key = (task, self.version())
        if self.merged_task == key:
            return
        if task not in self._positions:
            self._positions[task] = _positions(masks())
        off, negated = self._positions[task]
        if self.merged is None:
            self.merged = torch.empty_like(self.flat)
            self.merged_views = self.views(self.merged)
        with torch.no_grad():
            self.merged.copy_(self.flat).index_fill_(0, off, 0)
            if negated is not None:
                self.merged.index_copy_(0, negated, self.flat.take(negated).neg_())
        self.merged_task = key
