"""Shared fixtures: a tiny backbone and small synthetic loaders, made on the fly."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import piggylab as pl


def synthetic_loader(seed: int, n: int = 128, classes: int = 3, size: int = 32, batch_size: int = 32) -> DataLoader:
    """Images whose class is written in the mean of one colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), y % 3] += 1.0
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))



def random_masks(net, zero_fraction: float, seed: int, kind: str = "binary") -> dict:
    """Per masked weight of `net`, a random mask with about `zero_fraction` zeros (ternary: a
    third... half of them -1 instead), drawn from its own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for layer in net.masked_layers:
        u = torch.rand(net.original_weight(layer).shape, generator=g)
        mask = u >= zero_fraction
        masks[layer] = mask if kind == "binary" else mask.to(torch.int8) - (u < zero_fraction / 2).to(torch.int8)
    return masks

@pytest.fixture
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1)


@pytest.fixture
def loaders():
    return synthetic_loader(1), synthetic_loader(2)
