"""The paper's datasets (CUBS-200-2011, Stanford Cars, Flowers-102, WikiArt, Sketch; §5), read
from disk as tasks.

`paper_task` reads the reference code's folder layout (``root/<task>/train|test/<class>/<image>``)
with torchvision's ImageFolder, or torchvision's own Flowers102 / StanfordCars layout, with the
ImageNet-style transforms the paper trains with (224x224 crops and flips).

Not here: downloading (the datasets are fetched by hand, see data/README.md) or augmentation
beyond the paper's crops and flips.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .taskdata import PAPER_DATASETS, TaskData, unknown_task

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet's per-channel mean: the paper's datasets are normalised with it (the backbone's source)."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet's per-channel standard deviation, used like `IMAGENET_MEAN`."""


# Folder names accepted under root for each task (the reference code used the *_cropped ones).
_PAPER_FOLDERS: dict[str, tuple[str, ...]] = {
    "cubs": ("cubs", "cubs_cropped", "CUBS_cropped", "cub_200_2011"),
    "cars": ("cars", "stanford_cars_cropped", "cars_cropped"),
    "flowers": ("flowers", "flowers102", "flowers_102"),
    "wikiart": ("wikiart", "wikiart_cropped"),
    "sketch": ("sketch", "sketches", "tu_berlin"),
}


def layout_message(task: str, root: Any, problem: str) -> str:
    """`problem`, then the folder layout `paper_task` expects for `task` under `root`."""
    folders = " or ".join(repr(f) for f in _PAPER_FOLDERS.get(task, (task,)))
    lines = [
        f"{problem}",
        "expected layout (as in the reference code, one folder per class):",
        f"  {root}/{task}/train/<class>/<image>",
        f"  {root}/{task}/test/<class>/<image>",
        f"('{task}' may also be named {folders}; the validation split is carved from train)",
    ]
    if task == "flowers":
        lines.append(f"or torchvision's Flowers102 layout: {root}/flowers-102/jpg/*.jpg, imagelabels.mat, setid.mat")
    if task == "cars":
        lines.append(f"or torchvision's StanfordCars layout: {root}/stanford_cars/cars_train, cars_test, devkit/, "
                     "cars_test_annos_withlabels.mat")
    lines.append("see data/README.md for where to get each dataset")
    return "\n".join(lines)


def _safe_pil_loader(path: str) -> Any:
    """Open an image as RGB, naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


class _NamedErrors(Dataset):
    """Wraps a torchvision dataset so that a failed read names the image file."""

    def __init__(self, base: Any, path_of: Callable[[int], str]) -> None:
        self.base, self.path_of = base, path_of
        self.classes = list(getattr(base, "classes", []))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.base[i]
        except OSError as e:
            if "cannot read image" in str(e):
                raise
            raise OSError(f"cannot read image {self.path_of(i)}: {e}") from e


def _paper_transforms(weights_transforms: Any) -> tuple[Any, Any, tuple[float, ...], tuple[float, ...], int]:
    from torchvision import transforms as T

    mean, std, crop, resize = IMAGENET_MEAN, IMAGENET_STD, 224, 256
    if weights_transforms is not None:
        preset = weights_transforms.transforms() if hasattr(weights_transforms, "transforms") else weights_transforms
        if not (hasattr(preset, "mean") and hasattr(preset, "std")):
            raise TypeError("weights_transforms must be torchvision weights (e.g. ResNet50_Weights.IMAGENET1K_V1) "
                            f"or their .transforms() preset, got {type(weights_transforms).__name__}")
        mean, std = tuple(float(m) for m in preset.mean), tuple(float(s) for s in preset.std)
        crop = int(np.atleast_1d(getattr(preset, "crop_size", [crop]))[0])
        resize = int(np.atleast_1d(getattr(preset, "resize_size", [resize]))[0])
    train = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    evaluate = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])
    return train, evaluate, mean, std, crop  # type: ignore[return-value]


def _stratified_split(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): round(val_fraction * N) images go to val, spread over the
    classes in proportion to their sizes (largest remainders first, ties broken by `seed`)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(int(seed))
    targets_t = torch.as_tensor(list(targets), dtype=torch.long)
    classes = torch.unique(targets_t).tolist()
    members = {c: torch.nonzero(targets_t == c).flatten() for c in classes}
    members = {c: idx[torch.randperm(len(idx), generator=g)].tolist() for c, idx in members.items()}
    quota = {c: val_fraction * len(idx) for c, idx in members.items()}
    take = {c: int(math.floor(q)) for c, q in quota.items()}
    left = int(round(val_fraction * len(targets_t))) - sum(take.values())
    tiebreak = torch.rand(len(classes), generator=g).tolist()
    order = sorted(classes, key=lambda c: (-(quota[c] - take[c]), tiebreak[classes.index(c)]))
    for c in order[: max(0, left)]:
        if take[c] < len(members[c]) - 1:
            take[c] += 1
    val = [i for c in classes for i in members[c][: take[c]]]
    train = [i for c in classes for i in members[c][take[c]:]]
    return sorted(train), sorted(val)


def paper_task(task: str, root: str | Path, *, weights_transforms: Any = None, val_fraction: float = 0.1,
               seed: int = 0) -> TaskData:
    """The task of one of the paper's datasets (`task`, a key of `PAPER_DATASETS`; §5).

    Reads ``root/<task>/train/<class>/<image>`` and ``root/<task>/test/<class>/<image>`` (the
    reference code's layout) with torchvision's ImageFolder; for "flowers" and "cars" it falls
    back to torchvision's own Flowers102 / StanfordCars layout under `root`. Train images get
    RandomResizedCrop(224) + horizontal flip, val/test Resize(256) + CenterCrop(224); both are
    normalised with ImageNet statistics, or with those of `weights_transforms` (torchvision
    weights such as ``ResNet50_Weights.IMAGENET1K_V1``, or their ``.transforms()``). The val
    split is `val_fraction` of train, stratified by class, chosen with `seed`.
    """
    if task not in PAPER_DATASETS:
        raise unknown_task(task)
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(layout_message(task, root, f"dataset root {root!r} is not a directory"))
    from torchvision.datasets import ImageFolder

    root = Path(root)
    train_tf, eval_tf, mean, std, crop = _paper_transforms(weights_transforms)
    folder = next((root / f for f in _PAPER_FOLDERS[task] if (root / f / "train").is_dir()), None)
    if folder is not None:
        if not (folder / "test").is_dir():
            raise FileNotFoundError(layout_message(task, root, f"{folder / 'test'} is missing"))
        train_full = ImageFolder(str(folder / "train"), transform=train_tf, loader=_safe_pil_loader)
        eval_full = ImageFolder(str(folder / "train"), transform=eval_tf, loader=_safe_pil_loader)
        test: Dataset = ImageFolder(str(folder / "test"), transform=eval_tf, loader=_safe_pil_loader)
        if test.classes != train_full.classes:  # type: ignore[attr-defined]
            raise ValueError(f"{folder}: train and test have different class folders "
                             f"({len(train_full.classes)} vs {len(test.classes)})")  # type: ignore[attr-defined]
        classes, targets = list(train_full.classes), list(train_full.targets)
    elif task in ("flowers", "cars"):
        got = _torchvision_layout(task, root, train_tf, eval_tf)
        if got is None:
            raise FileNotFoundError(layout_message(task, root, f"no '{task}' folder with train/ under {root}"))
        train_full, eval_full, test, classes, targets = got
    else:
        raise FileNotFoundError(layout_message(task, root, f"no '{task}' folder with train/ under {root}"))
    if len(classes) != PAPER_DATASETS[task]:
        warnings.warn(f"{task}: found {len(classes)} classes, the paper's dataset has {PAPER_DATASETS[task]}",
                      stacklevel=2)
    train_idx, val_idx = _stratified_split(targets, val_fraction, seed)
    return TaskData(task, Subset(train_full, train_idx), Subset(eval_full, val_idx), test, classes,
                    f"The paper's {task} dataset read from {root}.", task, mean=mean, std=std,  # type: ignore[arg-type]
                    image_size=crop, origin={"root": str(root.resolve()), "seed": int(seed), "val_fraction": val_fraction})


def _torchvision_layout(task: str, root: Path, train_tf: Any, eval_tf: Any) -> tuple[Any, ...] | None:
    """torchvision's Flowers102 (train+val pooled for training) or StanfordCars, if present."""
    from torch.utils.data import ConcatDataset
    from torchvision import datasets as tvd

    def make(split: str, tf: Any) -> Any:
        if task == "flowers":
            base = tvd.Flowers102(str(root), split=split, transform=tf, download=False)
            return _NamedErrors(base, lambda i: str(base._image_files[i]))
        base = tvd.StanfordCars(str(root), split=split, transform=tf, download=False)
        return _NamedErrors(base, lambda i: str(base._samples[i][0]))

    try:
        if task == "flowers":
            parts_t = [make("train", train_tf), make("val", train_tf)]
            parts_e = [make("train", eval_tf), make("val", eval_tf)]
            train_full, eval_full = ConcatDataset(parts_t), ConcatDataset(parts_e)
            targets = list(parts_t[0].base._labels) + list(parts_t[1].base._labels)
            classes = list(getattr(parts_t[0].base, "classes", [str(i) for i in range(102)]))
            test = make("test", eval_tf)
        else:
            train_full, eval_full, test = make("train", train_tf), make("train", eval_tf), make("test", eval_tf)
            targets = [t for _, t in train_full.base._samples]
            classes = list(train_full.base.classes)
    except (RuntimeError, FileNotFoundError, OSError, ImportError):
        return None
    return train_full, eval_full, test, classes, targets

