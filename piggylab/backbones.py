"""Backbones: the lab's tiny ResNet and torchvision models by name.

`tiny_resnet` is a small CIFAR-style ResNet with batchnorm (9 convs, about 0.3M parameters) that the
lab pretrains on its embedded source task, standing in for the paper's ImageNet networks.
Loading weights (the committed checkpoint, torchvision's ImageNet weights) lives here too;
this module does not train anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual path (a 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """A ResNet for 32x32 inputs: a 3x3 stem, three stages of basic blocks, global pooling, fc."""

    def __init__(self, num_classes: int = 62, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(in_channels, width, 1 if i == 0 else 2)]
            stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_resnet(num_classes: int = 62, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 1) -> TinyResNet:
    """The lab's tiny backbone, randomly initialised."""
    return TinyResNet(num_classes, widths, blocks)


TINY_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "tiny_resnet.safetensors"
"""The committed tiny backbone, pretrained on the embedded source task (see data/README.md)."""

TORCHVISION_BACKBONES = ("vgg16", "vgg16_bn", "resnet18", "resnet50", "densenet121", "mobilenet_v3_small",
                         "convnext_tiny", "vit_b_16")
"""torchvision models the lab is tested with; any other torchvision classifier name works too."""

BACKBONES = ("tiny", *TORCHVISION_BACKBONES)


def load_tiny_backbone(path: str | Path | None = None) -> TinyResNet:
    """The pretrained tiny backbone from its safetensors checkpoint (no network, no GPU)."""
    path = Path(path) if path is not None else TINY_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no tiny backbone checkpoint at {path}; rebuild it with `make backbone`")
    state = load_file(str(path))
    metadata = safe_open(str(path), "pt").metadata() or {}
    model = tiny_resnet(int(metadata.get("num_classes", state["fc.weight"].shape[0])),
                        tuple(json.loads(metadata.get("widths", "[32, 64, 128]"))), int(metadata.get("blocks", 1)))
    model.load_state_dict(state)
    return model


def _torchvision_weights(name: str, weights: str | None):
    if weights is None:
        return None
    try:
        return torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        choices = ", ".join(w.name for w in torchvision.models.get_model_weights(name))
        raise ValueError(f"unknown weights {weights!r} for {name}; choose one of {choices}") from None


def load_backbone(name: str = "tiny", weights: str | None = "DEFAULT", *, weights_path: str | Path | None = None) -> nn.Module:
    """A backbone by name: `tiny` (the lab's, pretrained unless `weights=None`) or a torchvision model.

    torchvision weights (e.g. ``weights="IMAGENET1K_V1"``) are read from `weights_path` if
    given (torch's ``.pth`` format or ``.safetensors``), else from the local torch cache
    (``$TORCH_HOME/hub/checkpoints``), and are never downloaded here: a missing file is an
    error that says which file to put where.
    """
    if name == "tiny":
        return tiny_resnet() if weights is None else load_tiny_backbone(weights_path)
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown backbone {name!r}; choose tiny or a torchvision classifier such as "
                         f"{', '.join(TORCHVISION_BACKBONES)}")
    enum = _torchvision_weights(name, weights)
    model = torchvision.models.get_model(name, weights=None)
    if enum is None:
        return model
    file = Path(weights_path) if weights_path is not None else Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not file.exists():
        raise FileNotFoundError(f"the {name} weights {enum} are not on this machine: download {enum.url} "
                                f"and put it at {file} (or pass weights_path=...); piggylab never downloads at run time")
    state = load_file(str(file)) if file.suffix == ".safetensors" else \
        torch.load(file, map_location="cpu", weights_only=True)  # tensors only: no arbitrary unpickling
    if name.startswith("densenet"):  # torchvision's DenseNet files use the old 'norm.1' key names
        state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    model.load_state_dict(state)
    return model


_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
