"""The paper's comparisons as experiments: PackNet runs, backbone initialisation, task order.

Piggyback's claims (paper §4-§5) are comparisons, and each one is a function here returning
tidy result rows (one row per task and variant, the columns of `piggylab.experiments.run`
plus the variant's own):

- `packnet_config(recipe, epochs=...)`: PackNet's hyper-parameters beside `train_config`'s.
- `run_packnet(backbone, tasks, config)`: the PackNet baseline (Mallya & Lazebnik, CVPR 2018):
  the tasks packed into one network in the given order (`piggylab.packnet`).
- `backbone_init_ablation(variants, tasks, spec)`: piggyback masks learned over differently
  initialised copies of one architecture (`init_variants`: the pretrained backbone, random
  weights as in a supermask, a briefly pretrained early checkpoint). The paper's point (§5.1):
  masks need a well-initialised backbone.
- `packnet_orders(backbone, tasks, config, orders)`: PackNet in several task orders; a PackNet
  task's accuracy depends on its turn. Piggyback's side of the order question is
  `piggylab.experiments.order_check`.

This module trains through `piggylab.experiments`, `piggylab.train` and `piggylab.packnet`;
it does not write files (`piggylab.notebook`) or draw (`piggylab.plots`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .backbones import TINY_CHECKPOINT, TinyResNet, load_tiny_backbone
from .cache import RunCache
from .datasets import TaskData, make_loaders
from .experiments import RunSpec, run, train_config
from .packnet import PackNet, PackNetConfig, train_packnet
from .piggyback import PiggybackNet
from .pretrain import pretrain_tiny_backbone, record_path
from .train import evaluate


PACKNET_RECIPES: dict[str, dict[str, Any]] = {
    "embedded": {"optimizer": "adam", "lr": 1e-3},
    "paper": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9},
}
"""PackNet's optimiser per recipe: on the embedded tasks Adam (chosen on validation accuracy,
like `piggylab.experiments.EMBEDDED_RECIPES`); in the paper setting PackNet's SGD at 1e-3."""


def packnet_config(recipe: str = "embedded", *, epochs: int | None = None, **overrides: Any) -> PackNetConfig:
    """A `PackNetConfig` under a named recipe (`PACKNET_RECIPES`), with the epochs and learning-rate
    schedule `piggylab.experiments.train_config` gives the other methods, and any field overridden."""
    schedule = train_config("finetune", recipe, epochs=epochs)
    return PackNetConfig(**{"epochs": schedule.epochs, "decay_epochs": schedule.decay_epochs,
                            **PACKNET_RECIPES[recipe], **overrides})


def run_packnet(backbone: nn.Module, tasks: Sequence[TaskData], config: PackNetConfig, *, bn_mode: str = "task",
                seeds: Mapping[str, int] | None = None, batch_size: int = 32,
                progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pack `tasks` into one PackNet over a copy of `backbone`, in the order given (PackNet §3).

    Each task is trained with ``config`` (its seed replaced by ``seeds[task]``, default
    ``config.seed``), pruned and frozen. Once every task is in, each is evaluated on its test
    split. Returns ``(rows, histories)``: rows with task, method ("packnet"), position (its
    turn, from 1), accuracy (test), val_accuracy, train_accuracy, sparsity (the fraction of
    prunable weights its network does not use), owned_fraction, storage_bytes (head, BN and
    its share of the index), epochs and train_s; the histories stacked with a task column.
    """
    seeds = dict(seeds or {})
    net = PackNet(backbone, backbone_name="packnet", bn_mode=bn_mode)
    rows, histories, tests = [], [], {}
    for data in tasks:
        task_config = replace(config, seed=seeds.get(data.name, config.seed))
        train, val, tests[data.name] = make_loaders(data, batch_size=batch_size, seed=task_config.seed)
        net.add_task(data.name, data.num_classes, class_names=list(data.classes), seed=task_config.seed)
        start = time.perf_counter()
        history = train_packnet(net, data.name, train, val, task_config, progress=progress)
        rows.append({"task": data.name, "method": "packnet", "label": "packnet", "seed": task_config.seed,
                     "classes": data.num_classes, "val_accuracy": float(history["val_acc"].iloc[-1]),
                     "train_accuracy": float(history["train_acc"].iloc[-1]), "epochs": task_config.epochs,
                     "retrain_epochs": task_config.retrain_epochs, "prune_fraction": task_config.prune_fraction,
                     "train_s": round(time.perf_counter() - start, 2)})
        histories.append(history.assign(task=data.name))
    storage = net.storage_table().set_index("task")
    for row in rows:
        net.set_task(row["task"])
        s = storage.loc[row["task"]]
        row.update(position=int(s["position"]), accuracy=evaluate(net, tests[row["task"]], device=config.device,
                                                                  amp=config.amp),
                   sparsity=1.0 - float(s["used_fraction"]), owned_fraction=float(s["owned_fraction"]),
                   storage_bytes=float(s["head_bytes"] + s["bn_bytes"] + s["index_bytes"]))
    return pd.DataFrame(rows), pd.concat(histories, ignore_index=True)


@dataclass
class BackboneVariant:
    """One initialisation of the backbone architecture for `backbone_init_ablation`."""

    name: str
    model: nn.Module
    description: str
    source_accuracy: float | None = None
    """Validation accuracy on the source task (None where not measured)."""


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every layer re-initialised by its own `reset_parameters`
    (batchnorm statistics too): the same architecture, random weights."""
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


EARLY_CHECKPOINT = TINY_CHECKPOINT.with_name("tiny_resnet_early.safetensors")
"""Where an early checkpoint of the tiny backbone's pretraining run is read from, if present."""


def checkpoint_accuracy(path: str | Path | None = None) -> float | None:
    """Source-task validation accuracy of a tiny-backbone checkpoint, from the record beside it
    (default: the committed one); None when there is no record."""
    record = record_path(TINY_CHECKPOINT if path is None else path)
    return json.loads(record.read_text()).get("val_accuracy") if record.exists() else None


def init_variants(pretrained: nn.Module, *, source_accuracy: float | None = None,
                  early_checkpoint: str | Path | None = EARLY_CHECKPOINT, early_epochs: int = 1,
                  early_scale: float = 0.05, seed: int = 0, device: str = "auto") -> list[BackboneVariant]:
    """The backbones of the initialisation ablation, all of `pretrained`'s architecture:

    - ``pretrained``: `pretrained` itself (its source-task accuracy: `source_accuracy`);
    - ``random``: the same architecture re-initialised (`randomised`), as in a supermask;
    - ``early`` (the lab's tiny ResNet only): a backbone pretrained less. Read from
      `early_checkpoint` if that file exists (an early checkpoint of the tiny backbone's
      pretraining run, default `EARLY_CHECKPOINT`; never over another architecture, such as a
      torchvision ResNet on the paper's path); otherwise, with `early_epochs` > 0, pretrained
      here by `pretrain_tiny_backbone` for `early_epochs` on `early_scale` of the source task
      (a cheap stand-in: a few dozen steps, so often hardly better than random).
    """
    variants = [BackboneVariant("pretrained", pretrained, "the pretrained backbone", source_accuracy),
                BackboneVariant("random", randomised(pretrained, seed), "same architecture, random weights")]
    if isinstance(pretrained, TinyResNet) and early_checkpoint is not None and Path(early_checkpoint).exists():
        variants.append(BackboneVariant("early", load_tiny_backbone(early_checkpoint),
                                        f"early checkpoint {Path(early_checkpoint).name}",
                                        checkpoint_accuracy(early_checkpoint)))
    elif early_epochs > 0:
        if not isinstance(pretrained, TinyResNet):
            raise ValueError(f"an early checkpoint can be pretrained for the tiny backbone only, not "
                             f"{type(pretrained).__name__}; pass early_epochs=0")
        widths = tuple(stage[0].conv1.out_channels for stage in pretrained.layers)
        early, info = pretrain_tiny_backbone(epochs=early_epochs, scale=early_scale, seed=seed, device=device,
                                             widths=widths, blocks=len(pretrained.layers[0]), progress=False)
        variants.append(BackboneVariant("early", early, f"pretrained here {early_epochs} epoch(s) on "
                                        f"{early_scale:g} of the source task", info["val_accuracy"]))
    return variants


def backbone_init_ablation(variants: Sequence[BackboneVariant], tasks: Sequence[TaskData], spec: RunSpec, *,
                           batch_size: int = 32, cache: RunCache | None = None,
                           progress: bool = False) -> pd.DataFrame:
    """Piggyback (paper §3) on every task over every backbone variant; one row per (task, variant).

    Rows: `run`'s (task, method, accuracy, sparsity, ...) with the variant in their ``label``
    (``piggyback (random backbone)``), plus ``backbone_variant``, ``source_accuracy`` and
    ``experiment`` = ``backbone_init``. Paper §5.1: "a well-initialised
    backbone is essential". With a `cache`, the pretrained variant's runs are the standard ones.
    """
    rows = []
    for variant in variants:
        net = PiggybackNet(variant.model, backbone_name=variant.name)
        for data in tasks:
            result = run(net, data, spec, batch_size=batch_size, cache=cache, progress=progress)
            rows.append({**result.row, "label": f"{result.row['label']} ({variant.name} backbone)",
                         "backbone_variant": variant.name, "source_accuracy": variant.source_accuracy,
                         "experiment": "backbone_init"})
    return pd.DataFrame(rows)


def default_orders(tasks: Sequence[TaskData]) -> dict[str, list[str]]:
    """The given order and its reverse."""
    names = [data.name for data in tasks]
    return {"forward": names, "reversed": names[::-1]}


def packnet_orders(backbone: nn.Module, tasks: Sequence[TaskData], config: PackNetConfig, *,
                   orders: Mapping[str, Sequence[str]] | None = None, bn_mode: str = "task", batch_size: int = 32,
                   progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PackNet with the tasks added in every order of `orders` (label -> task names; default
    `default_orders`). Each task keeps ``config.seed`` whatever its turn, so any difference
    between the orders is the order's doing. Returns ``(rows, histories)``: `run_packnet`'s
    rows with ``order`` and ``label`` (``packnet (<order> order)``) columns, and the stacked
    histories with an ``order`` column."""
    by_name = {data.name: data for data in tasks}
    orders = dict(orders or default_orders(tasks))
    for label, order in orders.items():
        if sorted(order) != sorted(by_name):
            raise ValueError(f"order {label!r} must list each of {sorted(by_name)} once, got {list(order)}")
    rows, histories = [], []
    for label, order in orders.items():
        packed, history = run_packnet(backbone, [by_name[name] for name in order], config, bn_mode=bn_mode,
                                      batch_size=batch_size, progress=progress)
        rows.append(packed.assign(order=label, label=f"packnet ({label} order)"))
        histories.append(history.assign(order=label))
    return pd.concat(rows, ignore_index=True), pd.concat(histories, ignore_index=True)


def order_spread(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method and task: the accuracy in each order, and the largest difference between orders."""
    table = rows.pivot_table(index=["method", "task"], columns="order", values="accuracy", sort=False)
    return table.assign(spread=table.max(axis=1) - table.min(axis=1)).reset_index()
