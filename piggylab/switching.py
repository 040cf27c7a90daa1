"""Task switching in two kernels: a network's masked weights laid out in one flat buffer.

A network that serves many frozen tasks switches between them often (serving, evaluation,
the notebooks' task loops). Layer by layer, a switch costs one select kernel and some
Python per layer, and on a CPU the select ``where(mask, W, 0)`` itself runs at a third of
the speed of a copy (and slower still as the mask's zeros grow, paper §4's 5-40%). Here:

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
    """Flat positions (int64, sorted) that a task's masks turn off, and those they negate."""
    flat = torch.cat([m.reshape(-1) for m in masks])
    off = (flat == 0).nonzero().squeeze(1)
    negated = (flat < 0).nonzero().squeeze(1) if flat.dtype != torch.bool else None
    return off, (negated if negated is not None and negated.numel() else None)


class FlatWeights:
    """The frozen weights of a network's masked layers as views into one flat tensor.

    Building one copies the weights once and re-points each parameter (``param.data``) at its
    view, so parameters, state dicts and hooks see the same tensors as before. A device or
    dtype change of the network gives its parameters new storage: `intact` then turns false
    and the owner builds a new `FlatWeights`.
    """

    def __init__(self, weights: list[nn.Parameter]) -> None:
        devices_dtypes = {(w.device, w.dtype) for w in weights}
        if len(devices_dtypes) != 1:
            raise ValueError("all masked weights must share one device and dtype; "
                             f"found {sorted(str(d) for d in devices_dtypes)}")
        self._weights = weights
        with torch.no_grad():
            self.flat = torch.cat([w.detach().reshape(-1) for w in weights])
        for weight, view in zip(weights, self.views(self.flat)):
            weight.data = view
        self._pointers = [w.data_ptr() for w in weights]
        self.merged: Tensor | None = None
        self.merged_views: list[Tensor] | None = None
        self.merged_task: tuple[str, int] | None = None  # (task, version of the weights)
        self._positions: dict[str, tuple[Tensor, Tensor | None]] = {}

    def views(self, flat: Tensor) -> list[Tensor]:
        """`flat` cut into tensors shaped like the weights, in order (views, no copy)."""
        sizes = [w.numel() for w in self._weights]
        return [part.view(w.shape) for part, w in zip(flat.split(sizes), self._weights)]

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
