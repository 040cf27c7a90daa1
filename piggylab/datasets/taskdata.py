"""How a task's data is held: `TaskData` (a task's three splits and what it mirrors) and
`ArrayDataset` (in-memory uint8 images, normalised on access), with the task names and the
normalisation constants every part of `piggylab.datasets` shares.

Not here: making the images (`piggylab.datasets.embedded`), reading the paper's datasets
(`piggylab.datasets.paper`) or batching them (`piggylab.datasets.loaders`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

EMBEDDED_SOURCE = "glyphs"
"""The embedded source task: the backbone is pretrained on it (the lab's ImageNet)."""

EMBEDDED_TASKS: tuple[str, ...] = ("greek", "accents", "sketch", "textured", "fonts")
"""The five embedded target tasks, from near the source to far from it (see data/README.md):
new classes in the same domain, fine-grained classes, hand-drawn digits, a low-level shift,
then style instead of content."""

PAPER_DATASETS: dict[str, int] = {"cubs": 200, "cars": 196, "flowers": 102, "wikiart": 195, "sketch": 250}
"""The paper's five target datasets (§5) and their number of classes."""

IMAGE_SIZE = 32
"""Side of every embedded image (3 x IMAGE_SIZE x IMAGE_SIZE)."""

GLYPHS_MEAN: tuple[float, float, float] = (0.4994, 0.5010, 0.4994)
"""Per-channel mean of the source task's pixels in [0, 1]: `channel_stats` of
``embedded_task("glyphs", seed=0).train`` (default sizes), rounded to 4 decimals."""

GLYPHS_STD: tuple[float, float, float] = (0.2893, 0.2926, 0.2886)
"""Per-channel standard deviation of the source task's pixels, measured like `GLYPHS_MEAN`."""

SPLITS = ("train", "val", "test")
"""A task's splits, in this order."""

PAD = 3
"""Training augmentation of the embedded tasks: a shift by up to PAD pixels (edge padding, random crop)."""


def unknown_task(task: str) -> ValueError:
    """The error for a task name that is neither an embedded task nor a paper dataset: it lists both."""
    embedded = [EMBEDDED_SOURCE, *EMBEDDED_TASKS]
    return ValueError(f"unknown task {task!r}; known: embedded {embedded}, paper {list(PAPER_DATASETS)} "
                      f"(all: {', '.join([*embedded, *PAPER_DATASETS])})")


class ArrayDataset(Dataset):
    """Images held in memory as uint8 (N, 3, H, W), returned as normalised float tensors.

    ``ds[i]`` gives ``(image, label)``. With ``augment=True`` the image is shifted by up to
    `PAD` pixels (edge padding then a random crop; never flipped), drawing from torch's global
    RNG; `make_loaders` instead passes ``(i, dy, dx)`` keys drawn from its own seeded generator
    so a training run is reproducible. ``tensors()`` returns the whole split at once.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], *, mean: Sequence[float] = GLYPHS_MEAN,
                 std: Sequence[float] = GLYPHS_STD, augment: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.pad = PAD
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(self.std).view(1, 3, 1, 1) * 255.0)

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> normalised float32."""
        return (images.float() - self._mean) * self._scale

    def denormalise(self, x: Tensor) -> Tensor:
        """Normalised float (B, 3, H, W) -> float in [0, 1] (for display)."""
        return (x / (self._scale * 255.0) + self._mean / 255.0).clamp(0, 1)

    def _batch(self, keys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        idx, shifts = [], []
        for key in keys:
            if isinstance(key, (tuple, list)):
                idx.append(int(key[0]))
                shifts.append((int(key[1]), int(key[2])))
            else:
                idx.append(int(key))
                shifts.append(None)
        n = len(self)
        for i in idx:
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for a dataset of {n} images")
        index = torch.tensor(idx, dtype=torch.long)
        x = self.normalise(self.images[index])
        if self.augment or any(s is not None for s in shifts):
            p = self.pad
            drawn = torch.randint(0, 2 * p + 1, (len(idx), 2)) if self.augment else torch.full((len(idx), 2), p)
            dy = torch.tensor([s[0] if s is not None else int(drawn[j, 0]) for j, s in enumerate(shifts)])
            dx = torch.tensor([s[1] if s is not None else int(drawn[j, 1]) for j, s in enumerate(shifts)])
            if bool((dy < 0).any() or (dy > 2 * p).any() or (dx < 0).any() or (dx > 2 * p).any()):
                raise IndexError(f"crop offsets must lie in [0, {2 * p}], got dy={dy.tolist()} dx={dx.tolist()}")
            if bool((dy != p).any() or (dx != p).any()):
                x = _shift_crop(x, dy, dx, p)
        return x, self.labels[index]

    def __getitem__(self, key: Any) -> tuple[Tensor, int]:
        x, y = self._batch([key])
        return x[0], int(y[0])

    def __getitems__(self, keys: Sequence[Any]) -> list[tuple[Tensor, int]]:
        """Batched fetch used by DataLoader: normalises and crops the whole batch at once."""
        x, y = self._batch(keys)
        return list(zip(x.unbind(0), y.tolist()))

    def tensors(self, normalise: bool = True) -> tuple[Tensor, Tensor]:
        """The whole split, un-augmented: (images, labels); images normalised unless asked not to."""
        return (self.normalise(self.images) if normalise else self.images), self.labels


def _shift_crop(x: Tensor, dy: Tensor, dx: Tensor, pad: int) -> Tensor:
    """Edge-pad a batch by `pad` and crop each image at offset (dy, dx) in [0, 2 * pad]."""
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = (dy.view(b, 1, 1, 1) + torch.arange(h).view(1, 1, h, 1)).expand(b, c, h, w + 2 * pad)
    cols = (dx.view(b, 1, 1, 1) + torch.arange(w).view(1, 1, 1, w)).expand(b, c, h, w)
    return xp.gather(2, rows).gather(3, cols)


@dataclass
class TaskData:
    """One task's data: its three splits, class names and what it stands for in the paper.

    `name` is the task's name (an embedded task or a paper dataset), the name a network gives
    the task unless told another.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    description: str
    mirrors: str
    mean: tuple[float, float, float] = GLYPHS_MEAN
    std: tuple[float, float, float] = GLYPHS_STD
    image_size: int = IMAGE_SIZE
    origin: dict[str, Any] = field(default_factory=dict)
    """Where the data came from (generator seed and sizes, or folder and subset): with the task's
    name, what identifies it (the run cache's key uses it)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}  # type: ignore[arg-type]

    def __repr__(self) -> str:
        s = self.sizes()
        return (f"TaskData({self.name!r}, mirrors={self.mirrors!r}, classes={self.num_classes}, "
                f"train={s['train']}, val={s['val']}, test={s['test']})")


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (pixels scaled to [0, 1]) of uint8 images (N, 3, H, W)."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(mean.tolist()), tuple(std.tolist())
