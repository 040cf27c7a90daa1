"""Pretraining the lab's tiny backbone on the embedded source task (the lab's "ImageNet").

`pretrain_tiny_backbone(...)` trains a fresh `tiny_resnet` on `glyphs` with the package's own
`Trainer` (every weight trains, BN included), measures its source-task
validation and test accuracy and, given an `output` path, writes the checkpoint as safetensors
(atomically) with a JSON record beside it: recipe, seeds, accuracies, parameter count, the
file's SHA-256, the backbone fingerprint (`PiggybackNet.fingerprint`), date, versions, device
and wall time. ``python -m piggylab.pretrain`` (``make backbone``) rebuilds the committed
`data/tiny_resnet.safetensors` and `data/tiny_resnet.json` with the default recipe.

This module does not load checkpoints (that is `piggylab.backbones.load_tiny_backbone`) and
does not train target tasks (that is `piggylab.train`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save as safetensors_bytes

from .backbones import TINY_CHECKPOINT, TinyResNet, tiny_resnet
from .datasets import EMBEDDED_SOURCE, load_data, make_loaders
from .io import atomic_write_bytes
from .piggyback import PiggybackNet
from .train import Trainer, TrainConfig, evaluate, resolve_device

RECIPE: dict[str, Any] = {
    "epochs": 4, "lr": 1e-3, "batch_size": 64, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0,
    "decay_epochs": (3,), "lr_decay": 0.1, "widths": (32, 64, 128), "blocks": 1, "scale": 1.0,
}
"""The committed checkpoint's recipe: Adam, lr x0.1 for the last epoch, the full source task
(30000 images), one basic block per stage (315k parameters); about 12 minutes on 2 busy CPU cores."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(checkpoint: str | Path) -> Path:
    """Where the JSON record of a checkpoint lives: beside it, same stem, ``.json``."""
    return Path(checkpoint).with_suffix(".json")


def pretrain_tiny_backbone(*, epochs: int = RECIPE["epochs"], lr: float = RECIPE["lr"],
                           batch_size: int = RECIPE["batch_size"], seed: int = 0, scale: float = RECIPE["scale"],
                           device: str = "auto", output: str | Path | None = None, progress: bool = True,
                           optimizer: str = RECIPE["optimizer"], momentum: float = RECIPE["momentum"],
                           weight_decay: float = RECIPE["weight_decay"],
                           decay_epochs: Sequence[int] | None = None, widths: Sequence[int] = RECIPE["widths"],
                           blocks: int = RECIPE["blocks"], data_seed: int = 0) -> tuple[TinyResNet, dict[str, Any]]:
    """Train `tiny_resnet` on the source task; return ``(model, info)``, the model on CPU in eval mode.

    `optimizer` (``adam``, or ``sgd`` with `momentum`) with `weight_decay` at `lr`, multiplied
    by 0.1 at each of `decay_epochs` (default: the recipe's milestones rescaled to `epochs`).
    `seed` seeds the initialisation and the batch order, `data_seed` the generated source task
    (whose size is `scale` times the default). With `output` (a ``.safetensors`` path) the
    checkpoint is written there and the record `info` to `record_path(output)`, both
    atomically; with None nothing is written.
    """
    if decay_epochs is None:
        decay_epochs = sorted({max(1, round(e * epochs / RECIPE["epochs"])) for e in RECIPE["decay_epochs"]})
    recipe = {"epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "optimizer": optimizer,
              "momentum": float(momentum), "weight_decay": float(weight_decay),
              "decay_epochs": [int(e) for e in decay_epochs], "lr_decay": RECIPE["lr_decay"],
              "widths": [int(w) for w in widths], "blocks": int(blocks), "scale": float(scale),
              "data_seed": int(data_seed)}
    start = time.perf_counter()
    data = load_data(EMBEDDED_SOURCE, seed=data_seed, scale=scale)
    train_loader, val_loader, test_loader = make_loaders(data, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    model = tiny_resnet(data.num_classes, tuple(widths), blocks)
    config = TrainConfig("finetune", epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum,
                         weight_decay=weight_decay, decay_epochs=tuple(decay_epochs), lr_decay=RECIPE["lr_decay"],
                         device=device, seed=seed, recalibrate_bn=False)
    trainer = Trainer(config, progress=progress)
    if progress:
        trainer.add_callback("on_epoch_end", lambda _, row: print(
            f"epoch {row['epoch']:>2}: loss {row['loss']:.3f}  train {row['train_acc']:.4f}  "
            f"val {row['val_acc']:.4f}  ({row['wall_time']:.0f} s)", flush=True))
    history = trainer.fit(model, [{"params": list(model.parameters()), "lr": lr}], train_loader, val_loader,
                          describe="pretraining on the source task")
    model = model.cpu().eval()
    info: dict[str, Any] = {
        "recipe": recipe, "seed": int(seed), "source_task": EMBEDDED_SOURCE, "sizes": data.sizes(),
        "num_classes": data.num_classes,
        "val_accuracy": evaluate(model, val_loader, device="cpu"),
        "test_accuracy": evaluate(model, test_loader, device="cpu"),
        "history": [{k: (round(v, 5) if isinstance(v, float) else int(v)) for k, v in row.items() if k != "sparsity"}
                    for row in history.to_dict("records")],
        "parameters": sum(p.numel() for p in model.parameters()),
        "fingerprint": PiggybackNet(model, backbone_name="tiny").fingerprint(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(),
        "device": str(resolve_device(device)), "threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    if output is not None:
        info.update(save_checkpoint(model, output, seed=seed, recipe=recipe))
        atomic_write_bytes(record_path(output), (json.dumps(info, indent=2) + "\n").encode())
    return model, info


def save_checkpoint(model: TinyResNet, path: str | Path, *, seed: int, recipe: dict[str, Any]) -> dict[str, Any]:
    """Write `model`'s state dict as safetensors (atomically), with the metadata
    `load_tiny_backbone` reads; return the file's name, size and SHA-256."""
    widths = [stage[0].conv1.out_channels for stage in model.layers]
    metadata = {"num_classes": str(model.fc.out_features), "widths": json.dumps(widths),
                "blocks": str(len(model.layers[0])), "seed": str(seed), "recipe": json.dumps(recipe),
                "format": "piggylab tiny_resnet state dict"}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = atomic_write_bytes(path, safetensors_bytes(state, metadata))
    return {"checkpoint": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def checkpoint_path(update_committed: bool, output_dir: str | Path) -> Path:
    """Where notebook 00 writes its checkpoint: the committed one (`TINY_CHECKPOINT`) only when asked."""
    return TINY_CHECKPOINT if update_committed else Path(output_dir) / TINY_CHECKPOINT.name


def history_frame(info: dict[str, Any]) -> pd.DataFrame:
    """A pretraining run's history (`pretrain_tiny_backbone`'s ``info``), with a ``run`` column for the plots."""
    return pd.DataFrame(info["history"]).assign(run="pretraining")


def result_rows(info: dict[str, Any]) -> pd.DataFrame:
    """A pretraining run as one result row of the lab's tables (task, method, accuracy, ...)."""
    return pd.DataFrame([{"task": info["source_task"], "method": "pretrain", "label": "pretrain",
                          "accuracy": info["test_accuracy"], "val_accuracy": info["val_accuracy"], "sparsity": 0.0,
                          "storage_bytes": info.get("bytes", 0), "parameters": info["parameters"],
                          "epochs": info["recipe"]["epochs"], "train_s": info["wall_time_s"],
                          "fingerprint": info["fingerprint"]}])


def compare_with_committed(info: dict[str, Any], checkpoint: str | Path) -> pd.DataFrame:
    """This pretraining run beside the committed checkpoint's record (when `checkpoint` is another file)."""
    columns = {"source_task": "task", "test_accuracy": "accuracy", "val_accuracy": "val_accuracy",
               "parameters": "parameters", "wall_time_s": "train_s"}
    rows = [{"checkpoint": "this run", "epochs": info["recipe"]["epochs"], **{v: info[k] for k, v in columns.items()}}]
    committed = record_path(TINY_CHECKPOINT)
    if committed.exists() and Path(checkpoint) != TINY_CHECKPOINT:
        record = json.loads(committed.read_text())
        rows.append({"checkpoint": "committed", "epochs": record["recipe"]["epochs"],
                     **{v: record[k] for k, v in columns.items()}})
    return pd.DataFrame(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m piggylab.pretrain",
                                     description="Pretrain the tiny backbone on the embedded source task and save it.")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--lr", type=float, default=RECIPE["lr"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=RECIPE["optimizer"])
    parser.add_argument("--momentum", type=float, default=RECIPE["momentum"], help="SGD's momentum")
    parser.add_argument("--weight-decay", type=float, default=RECIPE["weight_decay"])
    parser.add_argument("--decay-epochs", type=int, nargs="*", default=None,
                        help="epochs after which the lr is multiplied by 0.1 "
                             "(default: the recipe's, rescaled to --epochs)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(RECIPE["widths"]),
                        help="channels of the stages")
    parser.add_argument("--blocks", type=int, default=RECIPE["blocks"], help="basic blocks per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=RECIPE["scale"], help="source-task size, times the default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=TINY_CHECKPOINT,
                        help=f"checkpoint path (default {TINY_CHECKPOINT}); the record goes beside it as .json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, info = pretrain_tiny_backbone(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                                     scale=args.scale, device=args.device, output=args.output, progress=not args.quiet,
                                     optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                                     decay_epochs=args.decay_epochs, widths=args.widths, blocks=args.blocks,
                                     data_seed=args.data_seed)
    print(f"{args.output}: source-task val {info['val_accuracy']:.4f}, test {info['test_accuracy']:.4f}, "
          f"{info['parameters']} parameters, {info['bytes']} bytes, fingerprint {info['fingerprint']}, "
          f"{info['wall_time_s']:.0f} s on {info['device']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
