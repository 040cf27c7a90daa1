"""Task files: a task's masks in about 1 bit per weight, its head and BN, safely on disk.

A task file is a safetensors file (no pickle) holding

- ``mask``: one uint8 stream for all masked layers, in one of two formats:
  ``packed`` (binary: exactly 1 bit per weight; ternary: 2 bits) or ``rice`` (entropy coded:
  the gaps between the rarer symbol's positions, Golomb-Rice coded per layer, so a mask with
  5% zeros costs about 0.3 bits per weight, near its entropy);
- ``head.*`` and, for task-specific BN (§5.3), ``bn.<layer>.*`` tensors;
- metadata: backbone name and fingerprint, mask settings, sparsity, class names, layer
  table, piggylab version and a SHA-256 of everything else, checked on load.

Files are written to a temporary file and renamed, so a crash leaves any old file intact.
Loading validates everything before the network is touched. The paper stores 1 bit per
weight (§5); the reference stored one byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .checks import check_choice
from .io import atomic_write_bytes
from .masked import MaskConfig, pack_mask, unpack_mask
from .piggyback import PiggybackNet

FORMATS = ("packed", "rice")


class TaskFileError(ValueError):
    """A task file that cannot be used: corrupted, truncated, or made for another backbone."""


# -- Golomb-Rice entropy coding -----------------------------------------------------------
def _rice_bits(gaps: np.ndarray, k: int) -> int:
    return int((gaps >> k).sum()) + len(gaps) * (1 + k)


def rice_encode(bits: np.ndarray) -> tuple[np.ndarray, dict]:
    """Entropy-code a bool array by the gaps between its rarer symbol (Golomb-Rice).

    Returns the uint8 stream and the header needed to decode it. Quotients are written in
    unary as one stream, remainders as fixed k-bit fields in another, so that both
    directions are vectorised.
    """
    bits = bits.astype(bool, copy=False).ravel()
    invert = bool(bits.sum() * 2 < len(bits))  # code the positions of the rarer symbol
    rare = np.flatnonzero(bits if invert else ~bits)
    gaps = np.diff(rare, prepend=-1) - 1
    k = min(range(32), key=lambda k: _rice_bits(gaps, k)) if len(gaps) else 0
    quotients, remainders = gaps >> k, gaps & ((1 << k) - 1)
    unary = np.ones(int(quotients.sum()) + len(gaps), dtype=bool)
    unary[np.cumsum(quotients + 1) - 1] = False  # each quotient ends with a 0
    fields = (remainders[:, None] >> np.arange(k - 1, -1, -1)) & 1 if k else np.zeros((len(gaps), 0), np.int64)
    stream = np.packbits(np.concatenate([unary, fields.ravel().astype(bool)]))
    return stream, {"n": len(bits), "rare": len(gaps), "k": k, "invert": invert, "unary_bits": len(unary)}


def rice_decode(stream: np.ndarray, header: dict) -> np.ndarray:
    n, count, k, unary_bits = header["n"], header["rare"], header["k"], header["unary_bits"]
    bits = np.unpackbits(stream, count=unary_bits + count * k).astype(bool)
    ends = np.flatnonzero(~bits[:unary_bits])
    if len(ends) != count:
        raise TaskFileError("entropy-coded mask stream is corrupted")
    quotients = np.diff(ends, prepend=-1) - 1
    fields = bits[unary_bits:].reshape(count, k).astype(np.int64)
    remainders = (fields << np.arange(k - 1, -1, -1)).sum(1) if k else 0
    positions = np.cumsum((quotients << k) + remainders + 1) - 1
    if count and positions[-1] >= n:
        raise TaskFileError("entropy-coded mask stream is corrupted")
    out = np.zeros(n, dtype=bool)
    out[positions] = True
    return out if header["invert"] else ~out


# -- encoding whole masks ----------------------------------------------------------------
def encode_mask(mask: np.ndarray, kind: str, fmt: str) -> tuple[np.ndarray, dict]:
    """One layer's mask -> (uint8 stream, header) in `fmt` (`packed`: `piggylab.masked.pack_mask`)."""
    if fmt == "packed":
        return pack_mask(torch.from_numpy(mask), kind).numpy(), {}
    if kind == "binary":
        return rice_encode(mask)
    nonzero, nz_header = rice_encode(mask != 0)
    negative, neg_header = rice_encode(mask[mask != 0] < 0)
    return np.concatenate([nonzero, negative]), {"nonzero": nz_header, "negative": neg_header, "split": len(nonzero)}


def decode_mask(stream: np.ndarray, header: dict, kind: str, fmt: str, count: int) -> np.ndarray:
    if fmt == "packed":
        return unpack_mask(torch.from_numpy(stream), kind, (count,)).numpy().astype(bool if kind == "binary" else np.int8)
    if kind == "binary":
        return rice_decode(stream, header)
    nonzero = rice_decode(stream[: header["split"]], header["nonzero"])
    negative = rice_decode(stream[header["split"]:], header["negative"])
    mask = nonzero.astype(np.int8)
    mask[nonzero] = np.where(negative, -1, 1)
    return mask


# -- files ------------------------------------------------------------------------
def _digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def task_bytes(net: PiggybackNet, task: str, fmt: str = "packed") -> bytes:
    """The task file's content, as `save_task` writes it."""
    check_choice(fmt, FORMATS, "format")
    from . import __version__

    info = net.task(task)
    config = info.mask
    streams, layers, offset, zeros = [], [], 0, 0
    for layer, mask in net.masks(task).items():
        array = mask.cpu().numpy()
        zeros += int((array == 0).sum())
        stream, header = encode_mask(array, config.kind, fmt)  # packed: the in-memory form of a frozen task
        streams.append(stream)
        layers.append({"name": layer, "shape": list(array.shape), "offset": offset, "nbytes": len(stream), **header})
        offset += len(stream)
    tensors = {"mask": torch.from_numpy(np.concatenate(streams))}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in net.task_state(task).items()})
    metadata = {
        "piggylab_version": __version__, "format": fmt, "task": task, "num_classes": str(info.num_classes),
        "class_names": json.dumps(info.class_names), "task_bn": json.dumps(info.task_bn),
        "backbone": net.backbone_name, "fingerprint": net.fingerprint(), "mask": json.dumps(asdict(config)),
        "sparsity": repr(zeros / net.num_masked_weights), "masked_weights": str(net.num_masked_weights),
        "layers": json.dumps(layers),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    return st_save(tensors, metadata)


def save_task(net: PiggybackNet, task: str, path: str | Path, fmt: str = "packed") -> Path:
    """Write one task (masks, head, task BN, metadata) to `path`, atomically."""
    return atomic_write_bytes(path, task_bytes(net, task, fmt))


def read_task_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a task file, verified against its checksum."""
    path = Path(path)
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        metadata = _metadata_of(data)
    except (SafetensorError, ValueError) as error:
        raise TaskFileError(f"{path} is not a readable task file (truncated or corrupted?): {error}") from None
    if not metadata or "sha256" not in metadata:
        raise TaskFileError(f"{path} is not a piggylab task file: no piggylab metadata")
    if _digest(tensors, metadata) != metadata["sha256"]:
        raise TaskFileError(f"{path} is corrupted: its checksum does not match its content")
    return tensors, metadata


def _metadata_of(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors byte string (its JSON header)."""
    if len(data) < 8:
        raise ValueError("file too short for a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header longer than the file")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def load_task(net: PiggybackNet, path: str | Path, *, task: str | None = None) -> str:
    """Add the task stored at `path` to `net` (as `task`, default: its saved name).

    Fails, leaving `net` unchanged, when the file is damaged, when it was made for another
    backbone (the error names both fingerprints), or when the task already exists.
    """
    tensors, meta = read_task_file(path)
    task = task or meta["task"]
    if meta["fingerprint"] != net.fingerprint():
        raise TaskFileError(f"{path} was made for backbone {meta['backbone']!r} with fingerprint {meta['fingerprint']}, "
                            f"but this network's backbone {net.backbone_name!r} has fingerprint {net.fingerprint()}")
    if task in net.tasks:
        raise ValueError(f"task {task!r} already exists; remove it first or load under another name")
    config = MaskConfig(**json.loads(meta["mask"]))
    layers = json.loads(meta["layers"])
    if [entry["name"] for entry in layers] != list(net.masked_layers):
        raise TaskFileError(f"{path} lists other masked layers than this network has")
    packed = meta["format"] == "packed"  # loaded straight into the in-memory packed form
    stream = tensors["mask"]
    masks = {}
    for entry in layers:
        chunk = stream[entry["offset"] : entry["offset"] + entry["nbytes"]]
        masks[entry["name"]] = chunk.clone() if packed else torch.from_numpy(decode_mask(
            chunk.numpy(), entry, config.kind, meta["format"], int(np.prod(entry["shape"]))).reshape(entry["shape"]))
    net.add_task(task, int(meta["num_classes"]), mask=config, task_bn=json.loads(meta["task_bn"]),
                 class_names=json.loads(meta["class_names"]), activate=False, masks=masks, packed=packed)
    try:
        net.load_task_state(task, {k: v for k, v in tensors.items() if k != "mask"})
    except BaseException:
        net.remove_task(task)
        raise
    return task


def mask_bits_per_weight(path: str | Path) -> float:
    """Bits per masked weight of the mask stream alone in a task file."""
    tensors, meta = read_task_file(path)
    return 8 * tensors["mask"].numel() / int(meta["masked_weights"])
