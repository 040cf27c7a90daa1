"""A task as a plain model: the backbone's own class, the task's masked weights baked in.

A trained task can be handed to someone who does not use piggylab (as PEFT's
``merge_and_unload`` does for adapters):

- `export_task` gives a model of the backbone's own class (for example
  `torchvision.models.ResNet`) whose masked weights are ``W * mask`` of the task, with the
  task's batchnorm (its own, or the backbone's) and its head as the classifier. Its
  ``state_dict`` loads into a fresh ``torchvision.models.resnet50(num_classes=K)``, and in
  float32 on the CPU it computes exactly what the network computes for that task.
- `write_export` writes it as a file: ``safetensors`` (its state dict, for the backbone's own
  class), ``torchscript`` (a traced program; TorchScript is deprecated in PyTorch, so also
  ``pt2``), ``pt2`` (a `torch.export` program, `torch.export.load`) or ``onnx`` (opset 18,
  dynamic batch; needs the ``onnx`` and ``onnxscript`` packages, ``pip install piggylab[export]``).
- `export_difference` loads a written file back as its users would (ONNX with onnxruntime on
  the CPU) and gives its largest output difference to the network's.
- `export_task_file` does all three from a task file and a backbone: the ``piggylab export``
  command.

Files are written atomically (`piggylab.io`); an existing file is replaced only when asked.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .checks import check_choice, first_layer
from .io import atomic_write_bytes
from .tasks import MultiTaskNet

EXPORT_FORMATS = ("safetensors", "torchscript", "pt2", "onnx")

ONNX_OPSET = 18


def export_task(net: MultiTaskNet, task: str) -> nn.Module:
    """Task `task` of `net` as a plain model of the backbone's own class, in eval mode and
    frozen: masked weights baked in (``W * mask``), the task's batchnorm and its head as the
    classifier. `net` is unchanged (its active task too). An unknown task is a KeyError
    naming the known ones."""
    return net.plain_model(task).eval()


def example_input(model: nn.Module, image_size: int = 224, batch: int = 2, seed: int = 0) -> Tensor:
    """A seeded random batch of images that fits `model`'s first layer: (batch, C, size, size)."""
    found = first_layer(model)
    channels = found[1].in_channels if found is not None and isinstance(found[1], nn.Conv2d) else 3
    return torch.randn(batch, channels, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another path or replace it with force=True (--force)")


def export_bytes(model: nn.Module, fmt: str, example: Tensor, metadata: dict[str, str] | None = None) -> bytes:
    """`model` in format `fmt` (`EXPORT_FORMATS`), as the file's bytes. `example` is a batch of
    inputs the program formats trace (the batch dimension stays dynamic for pt2 and ONNX)."""
    check_choice(fmt, EXPORT_FORMATS, "export format")
    model, metadata = model.eval(), metadata or {}
    if fmt == "safetensors":
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return st_save(state, metadata)
    buffer = io.BytesIO()
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export (pt2)
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(program, buffer, _extra_files={"piggylab.json": json.dumps(metadata)})
        return buffer.getvalue()
    batch = torch.export.Dim("batch", min=1)
    if fmt == "pt2":
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, buffer, extra_files={"piggylab.json": json.dumps(metadata)})
        return buffer.getvalue()
    return _onnx_bytes(model, example, batch, metadata)


def _onnx_bytes(model: nn.Module, example: Tensor, batch, metadata: dict[str, str]) -> bytes:
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"ONNX export needs the onnx and onnxscript packages ({error}); "
                           "install them with: pip install 'piggylab[export]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                                        verbose=False)
        program.model.metadata_props.update(metadata)
        program.save(path)
        return path.read_bytes()


def write_export(model: nn.Module, path: str | Path, fmt: str, example: Tensor, *, force: bool = False,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write `model` to `path` in format `fmt` (`export_bytes`), atomically. An existing
    `path` is refused (FileExistsError) unless `force`; an unknown format is a ValueError
    naming the formats, checked before anything is computed."""
    check_choice(fmt, EXPORT_FORMATS, "export format")
    path = Path(path)
    _refuse_existing(path, force)
    return atomic_write_bytes(path, export_bytes(model, fmt, example, metadata))


def run_export(path: str | Path, fmt: str, x: Tensor, like: nn.Module | None = None) -> Tensor:
    """The outputs on `x` of the exported file at `path`, loaded as its users would: a
    safetensors state dict into `like` (a model of the backbone's class; a copy is loaded),
    TorchScript with `torch.jit.load`, pt2 with `torch.export.load`, ONNX with onnxruntime on
    the CPU (``pip install onnxruntime``)."""
    check_choice(fmt, EXPORT_FORMATS, "export format")
    path = Path(path)
    with torch.no_grad():
        if fmt == "safetensors":
            if like is None:
                raise ValueError("loading a safetensors export needs a model of the backbone's class (like=)")
            model = copy.deepcopy(like)  # the backbone's class, its values replaced
            model.load_state_dict(st_load(path.read_bytes()))
            return model.eval()(x)
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu")(x)
        if fmt == "pt2":
            return torch.export.load(str(path)).module()(x)
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0])


def export_difference(net: MultiTaskNet, task: str, path: str | Path, fmt: str, x: Tensor,
                      like: nn.Module | None = None) -> float:
    """The largest absolute difference between the exported file's outputs on `x` and the
    network's for `task` (in eval mode, float32 on the CPU: 0.0 for every format but ONNX,
    whose runtime computes with its own kernels). A safetensors file is loaded into `like`
    (`run_export`; default: `export_task(net, task)`, made only for that format)."""
    if like is None and fmt == "safetensors":
        like = export_task(net, task)
    with torch.no_grad(), net.keeping_active_task():
        net.set_task(task)
        training = net.training
        expected = net.eval()(x)
        net.train(training)
    return float((run_export(path, fmt, x, like=like) - expected).abs().max())


@dataclass(frozen=True)
class ExportResult:
    """What `export_task_file` wrote and how close it computes to the network."""

    path: Path
    format: str
    task: str
    num_classes: int
    bytes: int
    max_difference: float | None
    """Largest absolute output difference to the network on a random batch; None if not checked."""


def export_task_file(task_file: str | Path, out: str | Path, *, backbone: str, weights: str | None = "DEFAULT",
                     fmt: str = "safetensors", image_size: int | None = None, force: bool = False,
                     check: bool = True) -> ExportResult:
    """Export the task stored in `task_file` (`piggylab.storage`) over `backbone` (its name;
    `weights`: a weights name such as ``DEFAULT`` or a file of the backbone's weights, as
    `piggylab.backbones.load_backbone` takes them) to `out` in format `fmt`.

    Refused before anything is computed: an unknown format, an existing `out` (unless
    `force`); then a task file made for another backbone (`TaskFileError` naming both
    fingerprints). With `check`, the written file is loaded back (`run_export`) and its
    largest output difference to the network on a random batch of `image_size` images
    (default 32 for the tiny backbone, else 224) is measured; ONNX is checked only where
    onnxruntime is installed.
    """
    from . import __version__
    from .backbones import load_backbone
    from .piggyback import PiggybackNet
    from .storage import load_task

    check_choice(fmt, EXPORT_FORMATS, "export format")
    out = Path(out)
    _refuse_existing(out, force)
    if weights is not None and os.path.exists(weights):
        model = load_backbone(backbone, "DEFAULT", weights_path=weights)
    else:
        model = load_backbone(backbone, weights)
    net = PiggybackNet(model, backbone_name=backbone)
    task = load_task(net, task_file)
    info = net.check_task(task)
    plain = export_task(net, task)
    size = image_size or (32 if backbone == "tiny" else 224)
    metadata = {"piggylab_version": __version__, "task": task, "num_classes": str(info.num_classes),
                "class_names": json.dumps(info.class_names), "backbone": backbone, "fingerprint": net.fingerprint(),
                "model_class": f"{type(plain).__module__}.{type(plain).__qualname__}"}
    write_export(plain, out, fmt, example_input(plain, size), force=force, metadata=metadata)
    difference = None
    if check and (fmt != "onnx" or _has_module("onnxruntime")):
        difference = export_difference(net, task, out, fmt, example_input(plain, size, batch=4, seed=1), like=plain)
    return ExportResult(out, fmt, task, info.num_classes, out.stat().st_size, difference)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
