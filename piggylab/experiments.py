"""Experiments: train one task by one method and measure it; the building block of the notebooks.

- `train_config(method, recipe, epochs=...)`: a `TrainConfig` from a named recipe, either the
  lab's `embedded` one (short runs on the embedded tasks) or the paper's (`paper_recipe`).
- `run_method(net, data, config, ...)`: add a task to a `PiggybackNet`, train it by the
  config's method (piggyback, classifier-only, fine-tuning), evaluate it on the test split and
  return one result row (task, method, accuracy, sparsity, storage_bytes, ...) and its history.
- `compare_methods(net, data, {label: options})`: several `run_method` calls on one task,
  their rows as a DataFrame and their histories stacked with a `run` column (what
  `piggylab.plots.training_curves` draws).
- Parameter rules for the notebooks' `check_parameters` (`PARAMETER_RULES`, `positive_int`,
  ...) and their smoke-test sizes (`SMOKE`).

This module does not write files (`piggylab.runs` does), draw (`piggylab.plots`) or hold a
training loop (`piggylab.train`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pandas as pd
from torch.utils.data import DataLoader

from .analysis import finetuned_bytes, overall_sparsity
from .datasets import EMBEDDED_TASKS, PAPER_DATASETS, TaskData, make_loaders
from .masks import MaskConfig, check_choice
from .network import PiggybackNet
from .storage import task_bytes
from .train import PAPER_BATCH_SIZE, Trainer, TrainConfig, evaluate, paper_recipe

if TYPE_CHECKING:
    from .plots import LiveCurve

RECIPES = ("embedded", "paper")

EMBEDDED_RECIPES: dict[str, dict[str, Any]] = {
    "piggyback": {"lr": 1e-2, "lr_scores": 2e-4},
    "classifier": {"lr": 1e-2},
    "finetune": {"lr": 1e-2, "optimizer": "sgd"},
}
"""Learning rates per method on the embedded tasks (Adam for scores and heads, SGD for
fine-tuning), among the candidates of ``scripts/embedded_results.py``, chosen on validation
accuracy of short runs. Scores move by about `lr_scores` per Adam step and start 5e-3 above the
threshold, so a much larger `lr_scores` (1e-3) wipes out a third of the mask within a few steps."""

EMBEDDED_DECAY_AT = 2 / 3
"""Embedded recipe: the learning rate drops x0.1 after this fraction of the epochs (the
paper's recipe drops it halfway, after 15 of 30)."""

RECIPE_EPOCHS = {"embedded": 4, "paper": 30}
"""Epochs of each recipe (a notebook's ``epochs=None``)."""

RECIPE_BATCH_SIZE = {"embedded": 64, "paper": PAPER_BATCH_SIZE}
"""Batch size of each recipe (a notebook's ``batch_size=None``)."""

SMOKE: dict[str, Any] = {"data_scale": 0.02, "epochs": 1, "batch_size": 32}
"""What ``smoke=True`` sets in every notebook: a few dozen images, one epoch."""

TASKS = (*EMBEDDED_TASKS, *(n for n in PAPER_DATASETS if n not in EMBEDDED_TASKS))
"""Task names a notebook accepts: the embedded targets, then the paper's datasets (with `data_root`)."""


def train_config(method: str = "piggyback", recipe: str = "embedded", *, epochs: int | None = None,
                 **overrides: Any) -> TrainConfig:
    """The `TrainConfig` of `method` under a named recipe, with `epochs` and any field overridden.

    `embedded`: `EMBEDDED_RECIPES`, 4 epochs, lr x0.1 after 2/3 of them. `paper`: the paper's
    hyper-parameters (`paper_recipe`), 30 epochs, lr x0.1 halfway. A given `epochs` moves the
    decay with it.
    """
    check_choice(recipe, RECIPES, "recipe")
    epochs = epochs or RECIPE_EPOCHS[recipe]
    if recipe == "paper":
        base, fraction = paper_recipe(method), 0.5
    else:
        check_choice(method, EMBEDDED_RECIPES, "method")
        base, fraction = TrainConfig(method, **EMBEDDED_RECIPES[method]), EMBEDDED_DECAY_AT
    decay = (round(epochs * fraction),) if epochs >= 3 else ()
    return replace(base, epochs=epochs, decay_epochs=decay, **overrides)


def resolve_sizes(recipe: str, *, smoke: bool, data_scale: float | None, epochs: int | None, batch_size: int | None,
                  embedded: bool, embedded_scale: float) -> tuple[float, int, int]:
    """The (data_scale, epochs, batch_size) a notebook runs with.

    A smoke run takes `SMOKE`'s. Otherwise a None is replaced by its default: `embedded_scale`
    for the embedded tasks (the notebook's CPU budget), all of a paper dataset, and the
    recipe's epochs and batch size.
    """
    if smoke:
        return SMOKE["data_scale"], SMOKE["epochs"], SMOKE["batch_size"]
    return (data_scale or (embedded_scale if embedded else 1.0), epochs or RECIPE_EPOCHS[recipe],
            batch_size or RECIPE_BATCH_SIZE[recipe])


def task_name(*parts: str) -> str:
    """A valid task name made of `parts` ("greek", "task BN" -> "greek-task_BN")."""
    return "-".join(re.sub(r"[^A-Za-z0-9_]+", "_", p).strip("_") or "_" for p in parts)


def run_method(net: PiggybackNet, data: TaskData, config: TrainConfig, *, label: str | None = None,
               mask: MaskConfig | None = None, task_bn: bool = False, name: str | None = None,
               loaders: tuple[DataLoader, DataLoader, DataLoader] | None = None, batch_size: int = 64,
               callbacks: Mapping[str, Callable] | None = None, progress: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train `data` as a new task of `net` by ``config.method``; return ``(row, history)``.

    The task is added as `name` (default ``data.name``) with head and scores seeded by
    ``config.seed``, so it trains the same whatever other tasks `net` holds. `classifier`
    trains the head (and task BN) over the all-ones mask; `finetune` trains a full copy of the
    network, and the task is removed from `net` afterwards (only piggyback and classifier
    tasks live in the shared network). `row`: task, method (`label`, default the method),
    name, accuracy (test), val_accuracy, train_accuracy, sparsity (and initial_sparsity, before
    training: not 0 for a random score init), storage_bytes (piggyback:
    its task file at 1 bit per weight, head and BN included; classifier: head and BN;
    finetune: a float32 copy of the network), epochs, train_s and the mask settings.
    `history` is the trainer's, with `run` (= method label) and `task` columns added.
    """
    name = name or data.name
    label = label or config.method
    train, val, test = loaders or make_loaders(data, batch_size=batch_size, seed=config.seed)
    net.add_task(name, data.num_classes, mask=mask, task_bn=task_bn, class_names=list(data.classes), seed=config.seed)
    initial_sparsity = overall_sparsity(net, name)
    trainer = Trainer(config, progress=progress)
    for event, fn in (callbacks or {}).items():
        trainer.add_callback(event, fn)
    start = time.perf_counter()
    history = trainer.fit(net, name, train, val)
    seconds = time.perf_counter() - start
    model = trainer.model if config.method == "finetune" else net
    accuracy = evaluate(model, test, task=None if config.method == "finetune" else name, device=config.device,
                        amp=config.amp)
    state_bytes = sum(4 * t.numel() for t in net.task_state(name).values())
    storage = {"piggyback": lambda: len(task_bytes(net, name, "packed")), "classifier": lambda: state_bytes,
               "finetune": lambda: finetuned_bytes(net, name)}[config.method]()
    task = net.task(name)
    row = {"task": data.name, "method": label, "name": name, "accuracy": accuracy,
           "val_accuracy": float(history["val_acc"].iloc[-1]), "train_accuracy": float(history["train_acc"].iloc[-1]),
           "sparsity": overall_sparsity(net, name) if config.method == "piggyback" else 0.0,
           "initial_sparsity": initial_sparsity if config.method == "piggyback" else 0.0,
           "storage_bytes": storage, "epochs": config.epochs, "train_s": round(seconds, 2),
           "mask_kind": task.mask.kind, "threshold": task.mask.threshold, "init": task.mask.init,
           "init_scale": task.mask.init_scale, "task_bn": task.task_bn or config.method == "finetune"}
    if config.method == "finetune":
        net.remove_task(name)
    return row, history.assign(run=label, task=data.name)


def compare_methods(net: PiggybackNet, data: TaskData, runs: Mapping[str, Mapping[str, Any]], *,
                    batch_size: int = 64, live: LiveCurve | None = None,
                    progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train `data` once per entry of `runs` (label -> `run_method` keyword arguments, at least
    ``config``); return the result rows and the stacked histories.

    Each run is a task of `net` named ``<task>-<label>``, trained on the same batches; `live`
    (a `piggylab.plots.LiveCurve`) draws them as they train, as ``<task>: <label>``.
    """
    loaders = make_loaders(data, batch_size=batch_size, seed=0)
    rows, histories = [], []
    for label, options in runs.items():
        callbacks = live.callbacks(f"{data.name}: {label}") if live is not None else None
        row, history = run_method(net, data, label=label, name=task_name(data.name, label), loaders=loaders,
                                  callbacks=callbacks, progress=progress, **options)
        rows.append(row)
        histories.append(history)
    return pd.DataFrame(rows), pd.concat(histories, ignore_index=True)


def accuracy_after_each(net: PiggybackNet, tasks: Iterable[str], test_loaders: Mapping[str, DataLoader], *,
                        device: str = "auto") -> list[dict[str, Any]]:
    """Test accuracy of each of `tasks` now: rows (task, accuracy) for an accuracy matrix."""
    return [{"task": t, "accuracy": evaluate(net, test_loaders[t], task=t, device=device)} for t in tasks]


# -- notebook parameter rules (for piggylab.runs.check_parameters) ------------------------------

def positive_int(value: Any) -> bool:
    """an integer >= 1"""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_number(value: Any) -> bool:
    """a number > 0"""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value == value


def fraction(value: Any) -> bool:
    """a number in (0, 1]"""
    return positive_number(value) and value <= 1


def known_backbone(value: Any) -> bool:
    """'tiny' or a torchvision classifier name such as 'resnet50', 'vgg16', 'densenet121'"""
    import torchvision

    return isinstance(value, str) and (value == "tiny" or value in torchvision.models.list_models(module=torchvision.models))


def known_device(value: Any) -> bool:
    """'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"""
    return isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None


def optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """`rule`, or None."""

    def check(value: Any) -> bool:
        return value is None or rule(value)

    check.__doc__ = f"{rule.__doc__}, or None"
    return check


def optional_str(value: Any) -> bool:
    """a string, or None"""
    return value is None or isinstance(value, str)


def non_empty_list_of(choices: Iterable[str]) -> Callable[[Any], bool]:
    """A rule for a non-empty list of distinct values out of `choices`."""
    choices = tuple(choices)

    def check(value: Any) -> bool:
        return isinstance(value, list) and len(value) > 0 and len(set(value)) == len(value) \
            and all(v in choices for v in value)

    check.__doc__ = f"a non-empty list of distinct values out of {', '.join(map(repr, choices))}"
    return check


def positive_numbers(value: Any) -> bool:
    """a non-empty list of numbers > 0"""
    return isinstance(value, list) and len(value) > 0 and all(positive_number(v) for v in value)


PARAMETER_RULES: dict[str, Any] = {
    "backbone": known_backbone, "weights": optional_str, "weights_path": optional_str, "data_root": optional_str,
    "data_scale": optional(fraction), "recipe": RECIPES, "epochs": optional(positive_int),
    "batch_size": optional(positive_int),
    "device": known_device, "seed": int, "smoke": bool, "output_dir": str,
}
"""Rules for the parameters every notebook shares (see `piggylab.runs.check_parameters`)."""

