"""Argument checks shared by the whole lab, so that every refusal reads the same way.

Each check returns the value (converted where that is safe) or raises `ValueError` (or
`TypeError` for a value of the wrong kind) naming what was wrong and what is allowed.

The batch checks (`check_batch_count`, `images_and_labels`, `check_images`, `check_labels`)
are what `piggylab.train` asks of a loader's batches before it trains or evaluates on them;
each message starts with `what`, the run it refuses (naming its task).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

import torch
from torch import nn


def check_choice(value: Any, choices: Collection[str], what: str) -> str:
    """`value` if it is one of `choices`, else a ValueError naming them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def finite_number(value: Any, what: str, *, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 with `positive`), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{what} must be {kind} finite number, got {value!r}")
    return value


def positive_int(value: Any, what: str) -> int:
    """An integer >= 1: 3 and 3.0 pass, 2.7, True and "ten" do not."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# -- batches of a loader (the trainer's and `evaluate`'s first-batch checks) ----------------------
def check_batch_count(count: int, what: str) -> None:
    """Refuse a loader that gives no batch (`count` of them; `what` names the loader and its run)."""
    if count == 0:
        raise ValueError(f"{what} is empty: it gives no batch (too few images for one batch with drop_last, "
                         "or an empty dataset)")


def images_and_labels(batch: Any, what: str) -> tuple[Any, Any]:
    """The (images, labels) pair a loader gave, or a TypeError naming what it gave instead."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    kind = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise TypeError(f"{what}: the loader must give (images, labels) pairs, got {kind}")


def first_layer(model: nn.Module) -> tuple[str, nn.Conv2d | nn.Linear] | None:
    """(name, layer) of the first `nn.Conv2d` or `nn.Linear` of `model` in its module order, the
    one the images meet (a masked layer's is its ``base_layer``, named as the masked layer); None
    if it has neither."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return name.removesuffix(".base_layer"), module
    return None


def check_images(images: Any, model: nn.Module, what: str) -> None:
    """Refuse images that are not a floating-point tensor, or whose rank or channel count does not
    fit `model`'s first layer (`first_layer`); the error names the shape it expects."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what}: images must be a tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{what}: images must be floating point (e.g. torch.float32), got {images.dtype}; "
                        "convert them, e.g. with torchvision's ToTensor() or x.float() / 255")
    found = first_layer(model)
    if found is None:
        return
    name, layer = found
    shape = tuple(images.shape)
    if isinstance(layer, nn.Conv2d):
        if len(shape) != 4 or shape[1] != layer.in_channels:
            raise ValueError(f"{what}: expected images of shape (N, {layer.in_channels}, H, W), got {shape} "
                             f"(the first layer, {name}, is a Conv2d with {layer.in_channels} input channels)")
    elif shape[-1:] != (layer.in_features,) and math.prod(shape[1:]) != layer.in_features:
        raise ValueError(f"{what}: expected inputs of shape (N, {layer.in_features}) or N inputs of "
                         f"{layer.in_features} values, got {shape} (the first layer, {name}, is a Linear "
                         f"with {layer.in_features} input features)")


def check_labels(labels: Any, count: int, num_classes: int, what: str) -> None:
    """Refuse labels that are not one integer class index in [0, num_classes) per image (`count` images)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{what}: labels must be a tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{what}: labels must be integer class indices (e.g. torch.int64), got {labels.dtype}")
    if tuple(labels.shape) != (count,):
        raise ValueError(f"{what}: expected one label per image, labels of shape ({count},), got {tuple(labels.shape)}")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        shown = ", ".join(str(v) for v in outside.unique()[:5].tolist())
        raise ValueError(f"{what}: labels must be in [0, {num_classes}) (the model gives {num_classes} class scores), "
                         f"got {shown}")
