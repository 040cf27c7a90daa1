"""Experiments: one run (one task trained by one method), measured and cached; the notebooks' building block.

- `train_config(method, recipe, ...)`: a `TrainConfig` from a named recipe, the lab's
  `embedded` one (short CPU runs, chosen on validation splits: data/README.md) or the
  paper's (`paper_recipe`).
- `RunSpec`: one run's method, label, training and mask settings.
- `run(net, data, spec, cache=...)`: train `data` as a new task of `net` (or read the finished
  run from the batch's `piggylab.cache.RunCache`), evaluate it on the test split and return
  a `RunResult`: one result row and the training history. The same function serves every
  notebook and the explorer.
- `compare(net, data, specs)`: several runs on one task (or each of several), as a table and
  stacked histories.
- `copy_task`, `mixed_accuracy`: a trained task copied (into another network, or as a distinct
  task of its own); the tasks' test images served in batches that mix tasks.

Result rows keep `method` (what trained: piggyback, classifier, finetune, packnet) apart from
`label` (the run's name in a table or a figure, e.g. "piggyback + task BN"). This module does
not write notebook outputs (`piggylab.notebook`), draw (`piggylab.plots`) or hold a training
loop (`piggylab.train`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from filelock import Timeout
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from .analysis import depth_thirds, finetuned_bytes, layer_sparsity, overall_sparsity
from .cache import RunCache, run_key
from .checkpoints import read_checkpoint
from .checks import check_choice, images_and_labels
from .datasets import EMBEDDED_TASKS, PAPER_DATASETS, TaskData, make_loaders
from .masked import MaskConfig
from .piggyback import METHODS, PiggybackNet
from .storage import load_task, task_bytes
from .train import PAPER_BATCH_SIZE, TrainConfig, evaluate, fit_task, paper_recipe, resolve_device

if TYPE_CHECKING:
    from .plots import LiveCurve

RECIPES = ("embedded", "paper")

EMBEDDED_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("classifier", "frozen"): {"lr": 3e-2},
    ("piggyback", "frozen"): {"lr": 1e-2, "lr_scores": 2e-4, "warmup_epochs": 1},
    ("piggyback", "task"): {"lr": 1e-2, "lr_scores": 5e-4},
    ("finetune", "task"): {"lr": 1e-3, "optimizer": "adam"},
}
"""The embedded recipe per (method, BN mode): learning rates (and a head warm-up) chosen on the
validation splits of the embedded tasks, never on test: `scripts/choose_recipes.py`, whose run
is data/recipes.csv (every candidate's validation and test accuracy per task; the chosen ones
have the best mean validation accuracy over the tasks). Fine-tuning trains every weight and
its BN; a classifier-only task keeps the backbone's frozen BN unless asked. With frozen BN the
scores learn more slowly than with task BN: at 5e-4 they switch off whole early layers on the far
tasks."""

EMBEDDED_DECAY_AT = 2 / 3
"""Embedded recipe: the learning rate drops x0.1 after this fraction of the epochs (the
paper's recipe drops it halfway, after 15 of 30)."""

RECIPE_EPOCHS = {"embedded": 6, "paper": 30}
"""Epochs of each recipe (a notebook's ``epochs=None``)."""

RECIPE_BATCH_SIZE = {"embedded": 32, "paper": PAPER_BATCH_SIZE}
"""Batch size of each recipe (a notebook's ``batch_size=None``)."""

EMBEDDED_SCALE = 0.5
"""Size of an embedded task in the notebooks, times its defaults (1500 train / 250 val / 500 test images)."""

SMOKE: dict[str, Any] = {"data_scale": 0.02, "epochs": 1, "batch_size": 32}
"""What ``smoke=True`` sets in every notebook: a few dozen images, one epoch."""

TASKS = (*EMBEDDED_TASKS, *(n for n in PAPER_DATASETS if n not in EMBEDDED_TASKS))
"""Task names a notebook accepts: the embedded targets, then the paper's datasets (with `data_root`)."""


def train_config(method: str = "piggyback", recipe: str = "embedded", *, bn_mode: str | None = None,
                 epochs: int | None = None, **overrides: Any) -> TrainConfig:
    """The `TrainConfig` of `method` (with batchnorm `bn_mode`) under a named recipe, with `epochs`
    and any field overridden.

    `embedded`: `EMBEDDED_RECIPES` for (method, BN mode; fine-tuning always trains its BN, a
    classifier or piggyback task without a mode keeps the frozen one), lr x0.1 after 2/3 of the
    epochs. `paper`: the paper's hyper-parameters (`paper_recipe`), lr x0.1 halfway. A given
    `epochs` moves the decay with it; a head warm-up longer than a short run is dropped.
    """
    check_choice(recipe, RECIPES, "recipe")
    check_choice(method, METHODS, "method")
    epochs = epochs or RECIPE_EPOCHS[recipe]
    if recipe == "paper":
        base, fraction = paper_recipe(method), 0.5
    else:
        mode = "task" if method == "finetune" else bn_mode or "frozen"
        key = (method, mode) if (method, mode) in EMBEDDED_RECIPES else (method, "frozen")
        base, fraction = TrainConfig(method, **EMBEDDED_RECIPES[key]), EMBEDDED_DECAY_AT
    settings = {"decay_epochs": (round(epochs * fraction),) if epochs >= 3 else (), **overrides, "epochs": epochs,
                "bn_mode": None if method == "finetune" else bn_mode}
    if settings.get("warmup_epochs", base.warmup_epochs) >= epochs:
        settings["warmup_epochs"] = 0
    return replace(base, **settings)


def resolve_sizes(recipe: str, *, smoke: bool, data_scale: float | None, epochs: int | None, batch_size: int | None,
                  embedded: bool) -> tuple[float, int, int]:
    """The (data_scale, epochs, batch_size) a notebook runs with: `SMOKE`'s for a smoke run,
    otherwise each None replaced by its default (`EMBEDDED_SCALE` of an embedded task, all of
    a paper dataset; the recipe's epochs and batch size)."""
    if smoke:
        return SMOKE["data_scale"], SMOKE["epochs"], SMOKE["batch_size"]
    return (data_scale or (EMBEDDED_SCALE if embedded else 1.0), epochs or RECIPE_EPOCHS[recipe],
            batch_size or RECIPE_BATCH_SIZE[recipe])


def task_name(*parts: str) -> str:
    """A valid task name made of `parts` ("greek", "task BN" -> "greek-task_BN")."""
    return "-".join(re.sub(r"[^A-Za-z0-9_]+", "_", p).strip("_") or "_" for p in parts)


@dataclass(frozen=True)
class RunSpec:
    """One run of a task: how it trains (`config`, whose method and BN mode it takes), its mask
    (piggyback) and the `label` naming it in tables (default: the method, "+ task BN" added)."""

    config: TrainConfig
    mask: MaskConfig = field(default_factory=MaskConfig)
    label: str | None = None

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def task_bn(self) -> bool:
        return self.config.bn_mode == "task"

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        return self.method + (" + task BN" if self.task_bn and self.method != "finetune" else "")


@dataclass
class RunResult:
    """What `run` returns: the result row, the training history (with `label` and `task`
    columns) and whether it was read from the cache."""

    row: dict[str, Any]
    history: pd.DataFrame
    cached: bool


def _spec_record(net: PiggybackNet, data: TaskData, spec: RunSpec, batch_size: int) -> dict[str, Any]:
    """Everything that determines a run, for its cache key (the device is not: results agree;
    a default init scale is written out, so naming it explicitly is the same run)."""
    config = {k: v for k, v in asdict(spec.config).items() if k != "device"}
    mask = {**asdict(spec.mask), "scale": spec.mask.init_scale} if spec.method == "piggyback" else None
    return {"backbone": net.fingerprint(), "task": data.name, "origin": data.origin, "sizes": data.sizes(),
            "config": config, "mask": mask,
            "batch_size": batch_size}


def run(net: PiggybackNet, data: TaskData, spec: RunSpec, *, task: str | None = None,
        loaders: tuple[DataLoader, DataLoader, DataLoader] | None = None, batch_size: int = 32,
        cache: RunCache | None = None, callbacks: Mapping[str, Callable] | None = None,
        progress: bool = False, checkpoint_dir: str | Path | None = None, wait: bool = True) -> RunResult | None:
    """Train `data` as task `task` (default ``data.name``) of `net` by `spec`; see the module docstring.

    With a `checkpoint_dir`, the training's state is saved after every epoch in
    ``checkpoint_dir/<key>.ckpt``, named by the run cache's `run_key` (two runs never share a
    file) and, if that file is there already, training resumes from it (`fit_task` with
    ``resume=True``): a killed run goes on from its last complete epoch. A finished run (stored
    in the `cache`, if any) removes its checkpoint; a failed or stopped one leaves it for the
    next attempt.

    The task's head and scores are seeded by the config's seed, so it trains the same whatever
    other tasks `net` holds. `classifier` trains the head (and task BN) over the all-ones mask;
    `finetune` trains a full copy of the network and leaves nothing in `net`. With a `cache`,
    a finished run is read back (its task loaded into `net` from its task file) instead of
    trained again. The row: task (the data's), method, label, name (the task's in `net`), bn_mode, mask settings, epochs, seed,
    accuracy (test), val_accuracy, train_accuracy, sparsity (zeros in the final mask),
    first_third_sparsity and last_third_sparsity (`piggylab.analysis.depth_thirds`),
    initial_sparsity (before training), negated (ternary: -1 entries), storage_bytes
    (piggyback: its task file; classifier: head and BN; finetune: a float32 network), train_s,
    status: ``done``, or ``stopped`` when a callback ended the training early (`Trainer.stop`;
    the row then measures what it trained, and the cache does not keep it), resumed_epoch (the
    epoch its checkpoint had completed when it resumed; 0: trained from the start).

    With ``wait=False``, a run that another process is computing (its cache entry locked)
    returns None at once instead of waiting for it (`compare` comes back to it later).
    """
    task = task or data.name
    record = _spec_record(net, data, spec, batch_size)
    key = run_key(record)
    checkpoint = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{key}.ckpt"
    with ExitStack() as held:
        if cache is not None:
            try:
                held.enter_context(cache.lock(key, timeout=-1 if wait else 0))
            except Timeout:
                return None
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            row, history = _train(net, data, spec, task, loaders, batch_size, callbacks, progress, checkpoint)
            if row["status"] == "done" and cache is not None:
                file = task_bytes(net, task) if spec.method != "finetune" else None
                cache.put(key, record, row, history, file)
    if hit is None:
        result = RunResult(row, history, cached=False)
    else:
        if hit.task_file is not None:
            load_task(net, hit.task_file, task=task)
        # the run is the same, its name here is this spec's (another notebook may have labelled it otherwise)
        result = RunResult({**hit.row, "name": task, "label": spec.name}, hit.history.assign(label=spec.name),
                           cached=True)
    if checkpoint is not None and result.row["status"] == "done":  # a cached run's: killed after it was stored
        checkpoint.unlink(missing_ok=True)
    return result


def _train(net: PiggybackNet, data: TaskData, spec: RunSpec, task: str,
           loaders: tuple[DataLoader, DataLoader, DataLoader] | None, batch_size: int,
           callbacks: Mapping[str, Callable] | None, progress: bool,
           checkpoint: Path | None) -> tuple[dict[str, Any], pd.DataFrame]:
    config = spec.config
    train, val, test = loaders or make_loaders(data, batch_size=batch_size, seed=config.seed)
    mask = spec.mask if spec.method == "piggyback" else MaskConfig()
    net.add_task(task, data.num_classes, mask=mask, task_bn=spec.task_bn, class_names=list(data.classes),
                 seed=config.seed)
    initial_sparsity = overall_sparsity(net, task)
    resumed_epoch = read_checkpoint(checkpoint)[1]["epoch"] if checkpoint is not None and checkpoint.exists() else 0
    start = time.perf_counter()
    model, history = fit_task(net, task, train, val, config, progress=progress, callbacks=callbacks,
                              checkpoint=checkpoint, resume=True)
    seconds = time.perf_counter() - start
    finetune = spec.method == "finetune"
    accuracy = evaluate(model, test, task=None if finetune else task, device=config.device, amp=config.amp)
    if finetune:
        storage = finetuned_bytes(net, task)
    elif spec.method == "classifier":
        storage = sum(4 * t.numel() for t in net.task_state(task).values())
    else:
        storage = len(task_bytes(net, task))
    pig = spec.method == "piggyback"
    masks = net.masks(task).values() if pig else ()
    first_third, last_third = depth_thirds(layer_sparsity(net, task)) if pig else (0.0, 0.0)
    row = {"task": data.name, "method": spec.method, "label": spec.name, "name": task,
           "bn_mode": "task" if spec.task_bn or finetune else "frozen",
           "mask_kind": mask.kind, "threshold": mask.threshold, "init": mask.init, "init_scale": mask.init_scale,
           "lr": config.lr, "lr_scores": config.lr_scores if pig else None, "epochs": config.epochs,
           "steps": int(history["step"].iloc[-1]), "seed": config.seed, "classes": data.num_classes,
           "test_images": len(test.dataset),
           "accuracy": accuracy, "val_accuracy": float(history["val_acc"].iloc[-1]),
           "train_accuracy": float(history["train_acc"].iloc[-1]),
           "sparsity": overall_sparsity(net, task) if pig else 0.0, "initial_sparsity": initial_sparsity if pig else 0.0,
           "first_third_sparsity": first_third, "last_third_sparsity": last_third,
           "negated": sum(int((m < 0).sum()) for m in masks) / net.num_masked_weights if pig else 0.0,
           "storage_bytes": storage, "train_s": round(seconds, 2),
           "status": "done" if int(history["step"].iloc[-1]) == config.epochs * len(train) else "stopped",
           "resumed_epoch": resumed_epoch}
    if finetune:
        net.remove_task(task)
    return row, history.assign(label=spec.name, task=data.name)


def compare(net: PiggybackNet, data: TaskData | Sequence[TaskData], specs: Sequence[RunSpec], *, batch_size: int = 32,
            cache: RunCache | None = None, live: LiveCurve | None = None, progress: bool = False,
            checkpoint_dir: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`run` each of `specs` on `data`, one task or each of several (with `run`'s `cache` and
    `checkpoint_dir`); return the result rows (task by task, in `specs`' order) and the
    stacked histories.

    Each run is a task of `net` named ``<task>-<label>``; `live` (a `piggylab.plots.LiveCurve`)
    draws them as they train, as ``<task>: <label>``. Runs go spec by spec over the tasks, and
    with a `cache`, one that another process is training is left for the end: two notebooks of
    a batch that need the same runs train different ones rather than wait for each other.
    """
    tasks = list(data) if isinstance(data, Sequence) else [data]
    order = [(s, t) for s in range(len(specs)) for t in range(len(tasks))]
    results: dict[tuple[int, int], RunResult] = {}
    for wait in (False, True):
        for s, t in order:
            if (s, t) in results:
                continue
            task, spec = tasks[t], specs[s]
            callbacks = live.callbacks(f"{task.name}: {spec.name}") if live is not None else None
            result = run(net, task, spec, task=task_name(task.name, spec.name), batch_size=batch_size, cache=cache,
                         callbacks=callbacks, progress=progress, checkpoint_dir=checkpoint_dir, wait=wait)
            if result is None:
                continue
            results[s, t] = result
            if live is not None and result.cached:
                live.add_history(f"{task.name}: {spec.name}", result.history)
    ordered = [results[s, t] for t in range(len(tasks)) for s in range(len(specs))]
    return (pd.DataFrame([r.row for r in ordered]),
            pd.concat([r.history for r in ordered], ignore_index=True))


def copy_task(source: PiggybackNet, target: PiggybackNet, task: str, *, name: str | None = None,
              switch_off: float = 0.0, seed: int = 0) -> None:
    """Add the frozen `task` of `source` to `target` (over the same backbone; `source` itself
    under another `name`) as `name` (default `task`): its packed masks, head and batchnorm, as
    loading its task file would. With `switch_off`, each mask entry is also set to 0 with that
    probability (drawn with `seed`): a distinct task made without training."""
    record = source.check_task(task)
    if source.fingerprint() != target.fingerprint():
        raise ValueError(f"cannot copy task {task!r}: the networks have different backbones "
                         f"({source.fingerprint()} vs {target.fingerprint()})")
    if switch_off:
        g = torch.Generator().manual_seed(seed)
        masks = {layer: mask.masked_fill(torch.rand(mask.shape, generator=g).to(mask.device) < switch_off, 0)
                 for layer, mask in source.masks(task).items()}
    else:
        masks = source.packed_masks(task)
    target.add_task(name or task, record.num_classes, mask=record.mask, task_bn=record.task_bn,
                    class_names=record.class_names, activate=False, masks=masks, packed=not switch_off)
    target.load_task_state(name or task, source.task_state(task))


def order_check(net: PiggybackNet, backbone: nn.Module, data: TaskData, spec: RunSpec, *, task: str | None = None,
                batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Train `data` again, last this time: in a new network over `backbone` (the one `net`
    wraps) that first receives every other task of `net` (`copy_task`), with the same spec.
    The backbone never changes, so the mask must come out bit-for-bit the one `net` holds for
    `task` (default ``data.name``), with the same test accuracy (paper §1: task order does not
    matter). Never read from a cache. Returns the run's row with ``order`` = ``trained last``
    and ``order_check``: ``identical`` or ``different``."""
    task = task or data.name
    other = PiggybackNet(backbone, backbone_name=net.backbone_name)
    for name in net.tasks:
        if name != task:
            copy_task(net, other, name)
    result = run(other, data, spec, task=task, batch_size=batch_size, progress=progress)
    first = net.masks(task)
    same = all(torch.equal(first[layer], mask) for layer, mask in other.masks(task).items())
    before = evaluate(net, make_loaders(data, batch_size=batch_size, seed=spec.config.seed)[2], task=task,
                      device=spec.config.device, amp=spec.config.amp)
    identical = same and before == result.row["accuracy"]
    return {**result.row, "label": f"{result.row['label']} (trained last)", "order": "trained last",
            "tasks_before": len(other.tasks) - 1, "order_check": "identical" if identical else "different"}


def accuracy_after_each(net: PiggybackNet, tasks: Iterable[str], test_loaders: Mapping[str, DataLoader], *,
                        device: str = "auto") -> list[dict[str, Any]]:
    """Test accuracy of each of `tasks` now: rows (task, accuracy) for an accuracy matrix."""
    return [{"task": t, "accuracy": evaluate(net, test_loaders[t], task=t, device=device)} for t in tasks]


def task_test_images(data: Mapping[str, TaskData], per_task: int | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """The first `per_task` (None: all) images and labels of each task's test split, in order
    (`data`: a task's name in a network -> its data)."""
    images = {}
    for task, task_data in data.items():
        test = task_data.test
        chosen = test if per_task is None else Subset(test, range(min(per_task, len(test))))  # type: ignore[arg-type]
        batch = next(iter(DataLoader(chosen, batch_size=len(chosen))))  # type: ignore[arg-type]
        images[task] = images_and_labels(batch, f"the test split of task {task!r}")
    return images


def mixed_test_batch(images: Mapping[str, tuple[Tensor, Tensor]], *, seed: int = 0) -> tuple[Tensor, Tensor, list[str]]:
    """Every task's test images (`task_test_images`) shuffled together by `seed`: (images, labels,
    the task of each image)."""
    owners = [task for task, (x, _) in images.items() for _ in range(len(x))]
    order = torch.randperm(len(owners), generator=torch.Generator().manual_seed(seed))
    return (torch.cat([x for x, _ in images.values()])[order], torch.cat([y for _, y in images.values()])[order],
            [owners[i] for i in order.tolist()])


def mixed_accuracy(net: PiggybackNet, images: Mapping[str, tuple[Tensor, Tensor]], *, batch_size: int = 32,
                   seed: int = 0, device: str = "auto") -> pd.DataFrame:
    """Each task's test accuracy served in batches that mix the tasks, against evaluated alone.

    The tasks' test images (`task_test_images`) are shuffled together (`mixed_test_batch`) and
    served in batches of `batch_size`, each image under its own task (`PiggybackNet.predict`);
    each task's images are also evaluated alone, in order (`evaluate`, without autocast, as
    `predict` computes). `net` is left in eval mode on `device`. Rows: task, test_images,
    alone, mixed (test accuracies).
    """
    device = resolve_device(device)
    x, y, owners = mixed_test_batch(images, seed=seed)
    net.eval().to(device)
    predicted = torch.cat([net.predict(x[i : i + batch_size].to(device), owners[i : i + batch_size]).cpu()
                           for i in range(0, len(owners), batch_size)])
    mixed = pd.Series((predicted == y).tolist()).groupby(owners).mean()
    return pd.DataFrame([{"task": task, "test_images": len(labels), "mixed": float(mixed[task]),
                          "alone": evaluate(net, DataLoader(TensorDataset(task_x, labels), batch_size=batch_size),
                                            task=task, device=device, amp=False)}
                         for task, (task_x, labels) in images.items()], columns=["task", "test_images", "alone", "mixed"])


class MultiTaskRun:
    """Tasks added one after another to one network, each in its BN mode chosen on validation
    (paper §5.3), with every kept task's test accuracy measured after each addition (§1:
    nothing is forgotten).

    `add(data, rows)` takes the rows of a task's piggyback runs in `net` (`compare`, one per BN
    mode), keeps the one with the higher validation accuracy, removes the others from `net`
    and measures every kept task. `matrix` is the accuracy matrix (after, task, accuracy);
    `results()` the rows with ``kept`` and, for kept tasks, ``accuracy_change`` (the largest
    change of its test accuracy while later tasks were added); `storage_totals()` the total
    bytes for the first k tasks, piggyback against one fine-tuned network per task.
    """

    def __init__(self, net: PiggybackNet, *, batch_size: int = 32, device: str = "auto") -> None:
        self.net, self.batch_size, self.device = net, batch_size, device
        self.rows: list[dict[str, Any]] = []
        self.kept: dict[str, str] = {}  # task -> its name in `net`
        self.tests: dict[str, DataLoader] = {}
        self._after: list[dict[str, Any]] = []

    @property
    def matrix(self) -> pd.DataFrame:
        """The accuracy matrix: test accuracy of each kept task (``task``) after each addition (``after``)."""
        return pd.DataFrame(self._after, columns=["after", "task", "accuracy"])

    def add(self, data: TaskData, rows: pd.DataFrame) -> str:
        """Keep the best of `rows` (by validation accuracy) for ``data.name``; returns its name in `net`."""
        best = rows.loc[rows["val_accuracy"].idxmax()]
        for name in rows["name"]:
            if name != best["name"]:
                self.net.remove_task(name)
        self.rows += [{**row, "kept": row["name"] == best["name"]} for row in rows.to_dict("records")]
        self.kept[data.name] = best["name"]
        self.tests[best["name"]] = make_loaders(data, batch_size=self.batch_size, seed=0)[2]
        task_of = {name: task for task, name in self.kept.items()}
        self._after += [{"after": data.name, "task": task_of[row["task"]], "accuracy": row["accuracy"]}
                        for row in accuracy_after_each(self.net, self.kept.values(), self.tests, device=self.device)]
        return best["name"]

    def results(self) -> pd.DataFrame:
        """The runs' rows; kept tasks have their ``accuracy_change`` over the additions."""
        spread = self.matrix.groupby("task")["accuracy"].agg(lambda a: float(a.max() - a.min()))
        return pd.DataFrame([{**row, "accuracy_change": spread[row["task"]] if row["kept"] else None}
                             for row in self.rows])

    def storage_totals(self) -> pd.DataFrame:
        """Bytes for the first k tasks: the backbone once plus k task files (piggyback) against k
        fine-tuned float32 networks."""
        net = self.net
        backbone = sum(4 * t.numel() for t in net.backbone_state().values() if t.is_floating_point())
        files = [len(task_bytes(net, name)) for name in self.kept.values()]
        finetuned = [finetuned_bytes(net, name) for name in self.kept.values()]
        rows = []
        for k in range(1, len(files) + 1):
            rows += [{"tasks": k, "approach": "piggyback: backbone + task files", "bytes": backbone + sum(files[:k])},
                     {"tasks": k, "approach": "one fine-tuned network per task", "bytes": sum(finetuned[:k])}]
        return pd.DataFrame(rows)
