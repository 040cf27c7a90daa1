"""A tiny synthetic stand-in for the paper's five datasets (CUBS, Cars, Flowers, WikiArt, Sketch),
written as JPEG files in the reference code's layout, so that the paper's path (`load_data(name,
root=...)`, `grids/paper.yaml`, the notebooks with ``data_root``) runs without the real data.

    from paper_data import write_paper_datasets
    root = write_paper_datasets(tmp_path / "paper")   # ROOT/<dataset>/train|test/<class>/<image>.jpg
    data = piggylab.datasets.load_data("cubs", root=root)

Each class is one colour (Sketch: one grey level, its images are greyscale as TU-Berlin's
are) under noise, so a network can tell the classes apart after a few steps. The class counts are tiny, so
`piggylab.datasets.paper_task` warns that they are not the paper's. Not a test: a helper for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from piggylab.datasets import PAPER_DATASETS

GREYSCALE = ("sketch",)
"""Datasets whose images are greyscale (the loader converts them to RGB)."""


def class_folder(dataset: str, index: int) -> str:
    """A class folder name in the style of CUBS' (``001.<name>``)."""
    return f"{index + 1:03d}.{dataset}_class_{index}"


def write_paper_datasets(root: str | Path, *, datasets: Sequence[str] = tuple(PAPER_DATASETS), classes: int = 3,
                         train_per_class: int = 10, test_per_class: int = 3, size: int = 32, seed: int = 0) -> Path:
    """Write `datasets` under `root` as ``root/<dataset>/train|test/<class>/<image>.jpg``:
    `classes` classes of `train_per_class` training and `test_per_class` test images, `size`
    pixels square, drawn from `seed`. Returns `root` (the ``data_root`` to give the lab)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(classes, 3))
    greys = np.repeat(np.linspace(40, 215, classes).round()[:, None], 3, axis=1)  # told apart without colour
    for dataset in datasets:
        if dataset not in PAPER_DATASETS:
            raise ValueError(f"unknown paper dataset {dataset!r}; choose among {', '.join(PAPER_DATASETS)}")
        mode, palette = ("L", greys) if dataset in GREYSCALE else ("RGB", colours)
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for index, colour in enumerate(palette):
                folder = root / dataset / split / class_folder(dataset, index)
                folder.mkdir(parents=True, exist_ok=True)
                for number in range(count):
                    pixels = np.clip(colour + rng.normal(0, 24, size=(size, size, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).convert(mode).save(folder / f"{split}_{number:04d}.jpg", "JPEG", quality=90)
    return root
