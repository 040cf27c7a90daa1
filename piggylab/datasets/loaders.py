"""Loading a task by name and batching it: `load_data` and `make_loaders`.

`load_data` gives the `TaskData` of an embedded task or of a paper dataset; `make_loaders`
gives its three DataLoaders, the training one shuffled (and, for the embedded tasks, shifted)
by a seeded generator so that the same seed gives the same batches.

Not here: making or reading the images (`piggylab.datasets.embedded`, `piggylab.datasets.paper`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, Subset

from .embedded import embedded_task
from .paper import layout_message, paper_task
from .taskdata import EMBEDDED_SOURCE, EMBEDDED_TASKS, PAPER_DATASETS, SPLITS, ArrayDataset, TaskData, unknown_task


def load_data(task: str, *, root: str | Path | None = None, seed: int = 0, scale: float = 1.0) -> TaskData:
    """The data of `task`: an embedded task (`EMBEDDED_SOURCE`, `EMBEDDED_TASKS`) or a paper
    dataset (`PAPER_DATASETS`).

    "sketch" names both the embedded handwritten-digit task and the paper's Sketch dataset: it
    means the paper's one only when `root` is given. The other paper datasets take `root` or,
    without it, the ``PIGGYLAB_DATA`` environment variable. For paper datasets, `scale` < 1
    keeps a random `scale` fraction of each split (for quick runs).
    """
    embedded = task == EMBEDDED_SOURCE or task in EMBEDDED_TASKS
    if embedded and not (task in PAPER_DATASETS and root is not None):
        return embedded_task(task, seed=seed, scale=scale)
    if task not in PAPER_DATASETS:
        raise unknown_task(task)
    root = root if root is not None else os.environ.get("PIGGYLAB_DATA")
    if root is None:
        raise FileNotFoundError(layout_message(task, "<root>", f"paper dataset {task!r} needs root= "
                                               "(or the PIGGYLAB_DATA environment variable)"))
    if not (isinstance(scale, (int, float)) and 0 < scale <= 1):
        raise ValueError(f"for a paper dataset scale must be in (0, 1], got {scale!r}")
    data = paper_task(task, root, seed=seed)
    if scale < 1.0:
        g = torch.Generator().manual_seed(int(seed))
        for split in SPLITS:
            ds = getattr(data, split)
            keep = torch.randperm(len(ds), generator=g)[: max(1, round(len(ds) * scale))]
            setattr(data, split, Subset(ds, sorted(keep.tolist())))
        data.origin["scale"] = float(scale)
    return data


class _ShiftSampler(Sampler):
    """Shuffles indices with a seeded generator and, for an augmenting ArrayDataset, pairs each
    index with a random crop offset from the same generator: yields ``(i, dy, dx)``."""

    def __init__(self, dataset: ArrayDataset, generator: torch.Generator) -> None:
        self.dataset, self.generator = dataset, generator

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):  # type: ignore[no-untyped-def]
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator)
        if not self.dataset.augment:
            yield from order.tolist()
            return
        shifts = torch.randint(0, 2 * self.dataset.pad + 1, (n, 2), generator=self.generator)
        for i, (dy, dx) in zip(order.tolist(), shifts.tolist()):
            yield (i, dy, dx)


def make_loaders(data: TaskData, batch_size: int = 64, *, seed: int = 0,
                 num_workers: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) DataLoaders. Train is shuffled (and, for embedded tasks, shifted) by a
    torch.Generator seeded with `seed`, so the same seed gives the same batches; val and test
    are in order and un-augmented."""
    g = torch.Generator().manual_seed(int(seed))
    if isinstance(data.train, ArrayDataset):
        sampler: Sampler = _ShiftSampler(data.train, g)
    else:
        sampler = RandomSampler(data.train, generator=g)  # type: ignore[arg-type]
    kw: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers,
                          "persistent_workers": num_workers > 0}
    train = DataLoader(data.train, sampler=sampler, generator=g, **kw)
    val = DataLoader(data.val, shuffle=False, **kw)
    test = DataLoader(data.test, shuffle=False, **kw)
    return train, val, test
