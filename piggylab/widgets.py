"""The explorer of notebook 07: widgets to train tasks in the background, sweep up to two knobs
and look at the masks, with every run kept on disk.

What it is
----------
`Explorer` puts the choices of a Piggyback run on widgets (task, method, mask kind, score
init, init scale, threshold, learning rates, epochs, BN mode) and shows, in one
`ipywidgets.VBox` (`Explorer.widget`):

- **Train**, **Stop** and a status line (what is training, then how the run ended, or the
  error of a failed run);
- **Sweep**: up to two knobs (`KNOBS`, e.g. ``lr_scores`` x ``threshold``) and their values;
  the grid is trained one run after another, and two heatmaps, validation accuracy and mask
  sparsity, fill in cell by cell (`Explorer.sweep_figure`);
- a live training curve (`Explorer.curve`): loss per step and validation accuracy per epoch,
  one pair of traces per run;
- the per-layer mask sparsity of the latest run (`Explorer.sparsity_figure`);
- the mask itself (`Explorer.mask_figure`): for a chosen run and layer, which weights are off,
  a conv layer's filters as rows; and how each layer's sparsity grew epoch by epoch
  (`Explorer.growth_figure`: a line per layer, or per group of layers in deep networks);
- the runs table (`Explorer.runs`), with each run's status: ``done``, ``stopped`` (by Stop,
  with what it trained so far) or ``failed`` (with its error).

Every run is ``piggylab.experiments.run`` (the notebooks' run function) adding a fresh task
(``<task>-<run number>``) to one shared `PiggybackNet`, so the backbone is loaded once per
kernel (`default_backbone`) and runs never interfere: the backbone is frozen and each run has
its own mask and head. Everything is driven from Python too: ``explorer.set(epochs=1)`` then
``explorer.train()`` is what a click on Train does (and waits for it), ``explorer.sweep(...)``
what Sweep does; the tests and the notebook use them headlessly.

In the background
-----------------
A click starts a worker thread and returns at once, so the kernel stays free: other cells run
and Stop is heard while a run trains. The worker updates the widgets and figures itself
(ipywidgets send their changes as comm messages, which a thread may do in ipykernel >= 6): the
live curve, a plotly ``FigureWidget``, point by point, at most every `refresh_s` seconds and at
the run's end; the other figures, plain plotly figures, are drawn whole into an
``ipywidgets.Output`` after each change (a ``FigureWidget`` carries plotly.js, about 5 MB, in its
widget state, which a reloaded page must fetch again for every one of them). Stop asks
the trainer to end after the current step (`piggylab.train.Trainer.stop`); the run is recorded
as ``stopped`` and a sweep ends with it. Only one job (a run or a sweep) trains at a time:
Train and Sweep are disabled meanwhile, and starting another from Python raises `ExplorerBusy`.

On disk
-------
With a `folder`, the runs table (``runs.csv``), each run's per-layer sparsity (``layers.csv``)
and its growth epoch by epoch (``growth.csv``) are rewritten after every run, and each sweep's
cells as ``sweep-<n>.csv``, all atomically (`piggylab.io`). An explorer created on the same
folder, after a kernel restart for example, shows those runs again and numbers new ones after
them. The masks themselves stay in memory: a restored run shows its sparsity and growth, not
its mask. Two explorers writing to one folder at the same time would overwrite each other.

What it is not
--------------
Not a training library (it calls `piggylab.experiments.run`), not a queue (one job at a
time), and not the notebooks' result writer (`piggylab.notebook.Lab` writes those). How its
figures look, and how a result is drawn in them, is `piggylab.explorer_figures`'.
"""

from __future__ import annotations

import functools
import html
import itertools
import math
import re
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
from torch import nn

from .analysis import SPARSITY_COLUMNS, layer_sparsity
from .backbones import TINY_CHECKPOINT, load_backbone
from .datasets import EMBEDDED_TASKS, TaskData, load_data, make_loaders
from .experiments import RunSpec, run, train_config
from .explorer_figures import (add_run_traces, curve_layout, display_data, draw_growth, draw_mask, draw_sparsity, fill_sweep_cell,
                               growth_layout, mask_layout, runs_html, sparsity_layout, start_sweep, store_view_state,
                               sweep_layout)
from .masked import DEFAULT_SCALE, DEFAULT_THRESHOLD, INIT_SCHEMES, MASK_KINDS, MaskConfig
from .notebook import write_table
from .piggyback import BN_MODES, METHODS, PiggybackNet
from .train import Trainer, resolve_device

__all__ = ["CSS_CLASSES", "KNOBS", "RUN_COLUMNS", "Explorer", "ExplorerBusy", "RunSettings", "Sweep",
           "default_backbone", "is_sweep", "recipe_rates"]

CSS_CLASSES: dict[str, str] = {
    "task": "piggylab-task", "method": "piggylab-method", "mask_kind": "piggylab-mask-kind",
    "init": "piggylab-init", "scale": "piggylab-scale", "threshold": "piggylab-threshold",
    "lr": "piggylab-lr", "lr_scores": "piggylab-lr-scores", "epochs": "piggylab-epochs",
    "bn_mode": "piggylab-bn-mode", "train": "piggylab-train", "stop": "piggylab-stop", "status": "piggylab-status",
    "knob_1": "piggylab-knob-1", "values_1": "piggylab-values-1", "knob_2": "piggylab-knob-2",
    "values_2": "piggylab-values-2", "sweep": "piggylab-sweep", "sweep_figure": "piggylab-sweep-figure",
    "curve": "piggylab-curve", "sparsity": "piggylab-sparsity", "mask_run": "piggylab-mask-run",
    "mask_layer": "piggylab-mask-layer", "mask": "piggylab-mask", "growth": "piggylab-growth",
    "runs": "piggylab-runs", "explorer": "piggylab-explorer",
}
"""CSS class of each part of the explorer, for browser tests (the part's name -> class)."""

MASK_SETTINGS = ("mask_kind", "init", "scale", "threshold", "lr_scores")
"""Settings that only piggyback uses: the other methods train with the mask all ones."""

KNOBS: dict[str, str] = {"lr": "LR head", "lr_scores": "LR scores", "threshold": "threshold τ",
                         "scale": "init scale", "epochs": "epochs"}
"""The settings a sweep can vary (a `RunSettings` field -> its name on screen)."""

MAX_KNOBS = 2
"""A sweep varies one knob or two (a heatmap's two axes)."""

RUN_COLUMNS = ["run", "sweep", "sweep_values", "status", "task", "method", "mask_kind", "init", "init_scale",
               "threshold", "lr", "lr_scores", "epochs", "bn_mode", "steps", "val_accuracy", "accuracy", "sparsity",
               "train_s", "error"]
"""The first columns of `Explorer.runs` (the rest are `piggylab.experiments.run`'s row); settings a
method does not use are left empty. ``sweep``: the sweep a run belongs to (empty for a single run),
``sweep_values`` its cell (``lr_scores=0.001, threshold=0.005``)."""

LAYER_COLUMNS = ["run", *SPARSITY_COLUMNS]
GROWTH_COLUMNS = ["run", "epoch", "step", *SPARSITY_COLUMNS]
"""`Explorer.growth`: each layer's sparsity at each epoch's end (``epoch``: a fraction for a stopped
run's last, partial epoch)."""

RUNS, LAYERS, GROWTH = "runs", "layers", "growth"
"""The explorer's folder holds them as ``<name>.csv`` (`piggylab.notebook.write_table`)."""

STATE_EVERY_S = 5.0
"""While a run trains, the live curve's whole widget state is stored at most this often."""


class ExplorerBusy(RuntimeError):
    """A run or a sweep is training; only one trains at a time."""


@functools.cache
def default_backbone() -> tuple[nn.Module, str]:
    """The lab's tiny backbone and a note saying which weights it has; loaded once per process.

    Pretrained from ``data/tiny_resnet.safetensors`` when that file exists; otherwise randomly
    initialised, with a warning: masks over an untrained network do much worse (paper §5.4).
    """
    if TINY_CHECKPOINT.exists():
        return load_backbone("tiny"), "tiny ResNet, pretrained on the glyphs source task"
    note = f"tiny ResNet, RANDOMLY initialised: {TINY_CHECKPOINT.name} is missing (build it with `make backbone`)"
    warnings.warn(note, stacklevel=3)  # points at the code creating the Explorer
    return load_backbone("tiny", weights=None), note


# -- what one run trains --------------------------------------------------------------------

def recipe_rates(method: str, bn_mode: str) -> dict[str, float]:
    """The learning rates (``lr``, ``lr_scores``) of the lab's embedded recipe for `method` in `bn_mode`."""
    config = train_config(method, "embedded", bn_mode=bn_mode)
    return {"lr": config.lr, "lr_scores": config.lr_scores}


@dataclass(frozen=True)
class RunSettings:
    """What one run trains: the explorer's controls, read when Train (or Sweep) is pressed.

    The learning rates default to the lab's embedded recipe for piggyback (`recipe_rates`);
    choosing a method or a BN mode on the widgets sets its recipe's.
    """

    task: str
    method: str = "piggyback"
    mask_kind: str = "binary"
    init: str = "constant"
    scale: float = DEFAULT_SCALE["constant"]
    threshold: float = DEFAULT_THRESHOLD
    lr: float = recipe_rates("piggyback", "frozen")["lr"]
    lr_scores: float = recipe_rates("piggyback", "frozen")["lr_scores"]
    epochs: int = 3
    bn_mode: str = "frozen"

    def mask_config(self) -> MaskConfig:
        """The task's mask: as chosen for piggyback; the default (all ones) for the other methods."""
        if self.method != "piggyback":
            return MaskConfig()
        return MaskConfig(kind=self.mask_kind, threshold=self.threshold, init=self.init, scale=self.scale)

    def spec(self, device: str, seed: int, label: str) -> RunSpec:
        """The run as `piggylab.experiments.run` takes it: the embedded recipe of the method with
        these learning rates and epochs (fine-tuning always trains BN, so it gets no `bn_mode`).
        Raises ValueError naming a bad setting."""
        config = train_config(self.method, "embedded", epochs=self.epochs, lr=self.lr, lr_scores=self.lr_scores,
                              device=device, seed=seed, bn_mode=self.bn_mode)
        return RunSpec(config, self.mask_config(), label)

    def row(self) -> dict[str, Any]:
        """The settings as the runs table has them, those the method does not use set to None."""
        row = asdict(self)
        if self.method != "piggyback":
            row.update(dict.fromkeys(MASK_SETTINGS))
        row["init_scale"] = row.pop("scale")
        if self.method == "finetune":  # fine-tuning trains every weight and the BN (the paper's baseline)
            row["bn_mode"] = None
        return row

    def label(self) -> str:
        """The run in a legend or a status line, e.g. ``greek (piggyback, binary mask)``."""
        mask = f", {self.mask_kind} mask" if self.method == "piggyback" else ""
        return f"{self.task} ({self.method}{mask})"


# -- sweeps ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """Up to `MAX_KNOBS` knobs (`KNOBS`) and their values: the grid of runs a sweep trains.

    >>> Sweep.parse({"lr_scores": "1e-4, 1e-3", "threshold": [5e-3, 8e-3]}).size
    4

    The first knob runs along the heatmaps' x axis, the second along their y axis.
    """

    knobs: tuple[tuple[str, tuple[float, ...]], ...]

    @classmethod
    def parse(cls, knobs: Mapping[str, str | Sequence[float]]) -> Sweep:
        """A sweep from ``{knob: values}``, the values numbers or a text of numbers separated by
        commas or spaces. Raises ValueError naming what is wrong and what is allowed."""
        if not knobs:
            raise ValueError(f"choose a knob to sweep (one of {', '.join(KNOBS)}) and give its values")
        if len(knobs) > MAX_KNOBS:
            raise ValueError(f"a sweep varies at most {MAX_KNOBS} knobs; got {len(knobs)}: {', '.join(knobs)}")
        return cls(tuple((name, _knob_values(name, values)) for name, values in knobs.items()))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.knobs]

    @property
    def size(self) -> int:
        return math.prod(len(values) for _, values in self.knobs)

    def axes(self) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
        """The values along x (the first knob) and along y (the second; None for one knob)."""
        return self.knobs[0][1], self.knobs[1][1] if len(self.knobs) > 1 else None

    def cells(self, base: RunSettings) -> list[tuple[tuple[int, int], dict[str, float], RunSettings]]:
        """The grid, row by row: ((x index, y index), the knobs' values, `base` with them)."""
        xs, ys = self.axes()
        cells = []
        for j, y in enumerate(ys or (None,)):
            for i, x in enumerate(xs):
                values = dict(zip(self.names, (x, y) if ys else (x,)))
                cells.append(((i, j), values, replace(base, **values)))
        return cells

    def describe(self) -> str:
        """The knobs and their value counts, e.g. ``lr_scores (2) × threshold (3)``."""
        return " × ".join(f"{name} ({len(values)})" for name, values in self.knobs)


def is_sweep(value: Any) -> bool:
    """a dict of at most two knobs (lr, lr_scores, threshold, scale, epochs), each with a list of numbers"""
    if not isinstance(value, Mapping):
        return False
    try:
        Sweep.parse(value)
    except (TypeError, ValueError):
        return False
    return True


def _knob_values(name: str, values: str | Sequence[float]) -> tuple[float, ...]:
    if name not in KNOBS:
        raise ValueError(f"unknown knob {name!r}; a sweep can vary {', '.join(KNOBS)}")
    tokens = [t for t in re.split(r"[,;\s]+", values) if t] if isinstance(values, str) else list(values)
    if not tokens:
        raise ValueError(f"give at least one value for knob {name!r} (e.g. 1e-4, 1e-3)")
    numbers = []
    for token in tokens:
        try:
            if isinstance(token, bool):
                raise TypeError
            number = float(token)
        except (TypeError, ValueError):
            raise ValueError(f"sweep values of {name!r} must be numbers, got {token!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"sweep values of {name!r} must be finite numbers, got {token!r}")
        if name == "epochs":
            if number != int(number) or number < 1:
                raise ValueError(f"sweep values of 'epochs' must be whole numbers >= 1, got {token!r}")
            number = int(number)
        numbers.append(number)
    repeated = sorted({v for v in numbers if numbers.count(v) > 1})
    if repeated:
        raise ValueError(f"sweep values of {name!r} repeat {', '.join(map(_number, repeated))}; give each once")
    return tuple(numbers)


def _number(value: float) -> str:
    return format(value, "g")


def _cell_text(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={_number(value)}" for name, value in values.items())


# -- the live run ---------------------------------------------------------------------------

@dataclass
class _Job:
    """What the worker thread is doing: a run or a sweep, and the request to stop it."""

    what: str
    stop: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


@dataclass
class _LiveRun:
    """The run being trained: its points so far and where they are drawn."""

    number: int
    task: str
    settings: RunSettings
    steps_per_epoch: int
    loss_trace: Any
    acc_trace: Any
    prefix: str = ""
    epoch: int = 1
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    growth: list[dict[str, Any]] = field(default_factory=list)
    last_draw: float = 0.0
    last_state: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.settings.epochs

    def progress(self, stopping: bool) -> str:
        text = (f"{self.prefix}training #{self.number} {html.escape(self.settings.label())}: epoch "
                f"{self.epoch}/{self.settings.epochs}, step {len(self.steps)}/{self.total_steps}")
        if self.losses:
            text += f", loss {self.losses[-1]:.3f}"
        if self.accuracies:
            text += f", val accuracy {self.accuracies[-1]:.1%}"
        return text + (" (stopping after this step…)" if stopping else "")


def _controls() -> dict[str, widgets.ValueWidget]:
    """The setting widgets, keyed like `RunSettings` fields (task options are set by the explorer)."""
    style = {"description_width": "110px"}
    lr = {"base": 10, "min": -5, "max": -1, "step": 0.25, "readout_format": ".0e", "style": style}
    defaults = RunSettings(task="")
    return {
        "task": widgets.Dropdown(description="Task", style=style),
        "method": widgets.Dropdown(options=list(METHODS), value=defaults.method, description="Method", style=style),
        "mask_kind": widgets.Dropdown(options=list(MASK_KINDS), value=defaults.mask_kind, description="Mask kind",
                                      style=style),
        "init": widgets.Dropdown(options=list(INIT_SCHEMES), value=defaults.init, description="Score init",
                                 style=style),
        "scale": widgets.FloatText(value=defaults.scale, description="Init scale", step=1e-3, style=style),
        "threshold": widgets.FloatText(value=defaults.threshold, description="Threshold τ", step=1e-3, style=style),
        "lr": widgets.FloatLogSlider(value=defaults.lr, description="LR head", **lr),
        "lr_scores": widgets.FloatLogSlider(value=defaults.lr_scores, description="LR scores", **lr),
        "epochs": widgets.BoundedIntText(value=defaults.epochs, min=1, max=100, description="Epochs", style=style),
        "bn_mode": widgets.Dropdown(options=list(BN_MODES), value=defaults.bn_mode, description="BN mode",
                                    style=style),
    }


def _sweep_controls() -> dict[str, widgets.ValueWidget]:
    """Two (knob, values) pairs; a knob left at "—" is not swept."""
    options = [("—", ""), *((label, name) for name, label in KNOBS.items())]
    style = {"description_width": "60px"}
    controls: dict[str, widgets.ValueWidget] = {}
    for i in (1, 2):
        controls[f"knob_{i}"] = widgets.Dropdown(options=options, value="", description=f"Knob {i}", style=style,
                                                 layout={"width": "200px"})
        controls[f"values_{i}"] = widgets.Text(placeholder="values, e.g. 1e-4, 1e-3", layout={"width": "260px"})
    return controls


class Explorer:
    """Widgets to train tasks of one shared `PiggybackNet` in the background, sweep settings and
    compare the runs; see the module docstring.

    >>> explorer = Explorer(folder="runs/explorer", scale=0.1)
    >>> explorer                      # in a notebook: shows the UI
    >>> explorer.set(task="greek", mask_kind="ternary", epochs=1)
    >>> explorer.train()              # what the Train button does, waiting for the run
    >>> explorer.sweep({"lr_scores": [1e-4, 1e-3], "threshold": [5e-3, 1e-2]})
    >>> explorer.runs                 # one row per run

    `backbone`: a classifier to mask (its last Linear layer is replaced by the task heads);
    None for the lab's tiny backbone (`default_backbone`). `folder`: where the runs are kept
    (None: nowhere). `scale` sizes the embedded datasets (1.0: their default sizes).
    `refresh_s`: at most how often the live curve and the status line are redrawn.
    """

    def __init__(self, backbone: nn.Module | None = None, *, folder: str | Path | None = None,
                 tasks: Sequence[str] = EMBEDDED_TASKS, scale: float = 1.0, batch_size: int = 64,
                 device: str = "auto", seed: int = 0, refresh_s: float = 0.25) -> None:
        if not tasks:
            raise ValueError("tasks must name at least one task")
        if backbone is None:
            backbone, backbone_note = default_backbone()
        else:
            backbone_note = type(backbone).__name__
        self.net = PiggybackNet(backbone, backbone_name=backbone_note)
        self.folder = None if folder is None else Path(folder)
        self.scale, self.batch_size, self.seed, self.refresh_s = scale, batch_size, seed, refresh_s
        self.device = str(resolve_device(device))
        self.error: str | None = None
        """The error of the latest failed run, or None."""
        self._lock = threading.Lock()  # the tables, which the worker writes and the kernel reads
        self._job: _Job | None = None
        self._datasets: dict[str, TaskData] = {}
        self._tasks: dict[int, str] = {}  # run number -> its task in `net` (runs of this explorer)
        rows, layers, growth = _read_folder(self.folder)
        self.layers: dict[int, pd.DataFrame] = layers
        """Per run number: the per-layer mask sparsity of that run (`layer_sparsity`)."""
        self._rows: list[dict[str, Any]] = rows
        self._growth: list[dict[str, Any]] = growth
        self._choosing_mask = False  # the mask view's choices are being updated: draw once, after
        self._numbers = itertools.count(max((int(r["run"]) for r in rows), default=0) + 1)
        self._sweep_numbers = itertools.count(max((int(r["sweep"]) for r in rows if pd.notna(r["sweep"])),
                                                  default=0) + 1)

        self.controls: dict[str, widgets.ValueWidget] = _controls()
        self.controls["task"].options = list(tasks)
        self.controls["task"].value = tasks[0]
        self.sweep_controls = _sweep_controls()
        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play",
                                           tooltip="train a new task with these settings, in the background")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                          tooltip="end the run (and the sweep) after the current step")
        self.sweep_button = widgets.Button(description="Sweep", button_style="info", icon="th",
                                           tooltip="train every combination of the knobs' values, one after another")
        self.status = widgets.HTML()
        self.curve = go.FigureWidget(curve_layout())
        self.sweep_figure = sweep_layout()
        self.sparsity_figure = sparsity_layout()
        self.mask_run = widgets.Dropdown(description="Run", style={"description_width": "60px"})
        largest = max(self.net.masked_layers, key=lambda name: self.net.original_weight(name).numel())
        self.mask_layer = widgets.Dropdown(options=list(self.net.masked_layers), value=largest,
                                           description="Layer", style={"description_width": "60px"})
        self.mask_figure = mask_layout()
        self.growth_figure = growth_layout()
        self._views = {name: (figure, widgets.Output()) for name, figure in (  # each drawn whole in an output
            ("sweep_figure", self.sweep_figure), ("sparsity", self.sparsity_figure), ("mask", self.mask_figure),
            ("growth", self.growth_figure))}
        self.runs_table = widgets.HTML(value=runs_html(self.runs))
        self.widget = self._assemble(backbone_note)

        self.train_button.on_click(lambda _button: self.train(wait=False))
        self.sweep_button.on_click(lambda _button: self.sweep(wait=False))
        self.stop_button.on_click(lambda _button: self.stop())
        for name in ("method", "bn_mode"):
            self.controls[name].observe(self._recipe_changed, "value")
        self.controls["init"].observe(self._init_changed, "value")
        for control in (self.mask_run, self.mask_layer):
            control.observe(lambda _change: self._choosing_mask or self._show_mask(), "value")
        self._enable_method_settings()
        self._render("sweep_figure", "sparsity")
        self._update_mask_runs()
        where = (f"runs are kept in {html.escape(str(self.folder))}" if self.folder is not None
                 else "runs are not kept on disk (no folder)")
        restored = f"{len(rows)} run(s) restored from {html.escape(str(self.folder))}; " if rows else ""
        self._set_status(f"ready on {html.escape(self.device)}: {restored}{where}. Choose the settings and press "
                         "Train, or choose knobs and press Sweep")

    # -- layout ----------------------------------------------------------------------
    def _assemble(self, backbone_note: str) -> widgets.VBox:
        c, s = self.controls, self.sweep_controls
        parts = {**c, **s, "train": self.train_button, "stop": self.stop_button, "sweep": self.sweep_button,
                 "status": self.status, "mask_run": self.mask_run, "mask_layer": self.mask_layer}
        for name, control in parts.items():
            control.add_class(CSS_CLASSES[name])
        boxes = {"curve": widgets.Box([self.curve]), **{name: output for name, (_, output) in self._views.items()}}
        for name, box in boxes.items():
            box.add_class(CSS_CLASSES[name])
        runs_box = widgets.VBox([widgets.HTML("<b>Runs</b>"), self.runs_table])
        runs_box.add_class(CSS_CLASSES["runs"])
        header = widgets.HTML(f"<b>Piggyback explorer</b>: backbone {html.escape(backbone_note)}; "
                              f"data scale {self.scale:g}, batch size {self.batch_size}")
        columns = widgets.HBox([
            widgets.VBox([c["task"], c["method"], c["epochs"], c["bn_mode"], c["lr"]]),
            widgets.VBox([c["mask_kind"], c["init"], c["scale"], c["threshold"], c["lr_scores"]]),
        ])
        sweep_row = widgets.HBox([s["knob_1"], s["values_1"], s["knob_2"], s["values_2"], self.sweep_button])
        mask_row = widgets.HBox([widgets.HTML("<b>The mask</b>"), self.mask_run, self.mask_layer])
        box = widgets.VBox([header, columns, widgets.HBox([self.train_button, self.stop_button, self.status]),
                            widgets.HTML("<b>Sweep</b>: up to two knobs, values separated by commas"), sweep_row,
                            boxes["curve"], boxes["sweep_figure"], boxes["sparsity"], mask_row, boxes["mask"],
                            boxes["growth"], runs_box])
        box.add_class(CSS_CLASSES["explorer"])
        return box

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        store_view_state(self.curve)
        return self.widget._repr_mimebundle_(**kwargs)

    def _render(self, *names: str) -> None:
        """Draw the figures `names` (parts of `CSS_CLASSES`) anew in their outputs."""
        for name in names:
            figure, output = self._views[name]
            output.outputs = (display_data(figure),)

    def _enable_method_settings(self) -> None:
        method = self.controls["method"].value
        for name in MASK_SETTINGS:
            self.controls[name].disabled = method != "piggyback"
        self.controls["bn_mode"].disabled = method == "finetune"

    def _recipe_changed(self, _change: dict) -> None:
        self.set(**recipe_rates(self.controls["method"].value, self.controls["bn_mode"].value))
        self._enable_method_settings()

    def _init_changed(self, change: dict) -> None:
        self.controls["scale"].value = DEFAULT_SCALE[change["new"]]

    # -- settings and tables ---------------------------------------------------------
    def set(self, **values: Any) -> None:
        """Set controls by `RunSettings` field name, as a user would (e.g. ``set(epochs=1)``), in the
        order given: choosing a `method` or a `bn_mode` sets its recipe's learning rates and choosing
        an `init` its default `scale`, so give those after it."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(f"unknown control(s) {sorted(unknown)}; known: {', '.join(self.controls)}")
        for name, value in values.items():
            self.controls[name].value = value

    @property
    def settings(self) -> RunSettings:
        """The settings the controls show now."""
        return RunSettings(**{f.name: self.controls[f.name].value for f in fields(RunSettings)})

    @property
    def runs(self) -> pd.DataFrame:
        """One row per run, restored ones first (`RUN_COLUMNS`, then the rest of `experiments.run`'s row)."""
        with self._lock:
            rows = list(self._rows)
        extra = list(dict.fromkeys(k for row in rows for k in row if k not in RUN_COLUMNS))
        return pd.DataFrame(rows, columns=[*RUN_COLUMNS, *extra])

    @property
    def growth(self) -> pd.DataFrame:
        """Each piggyback run's per-layer sparsity at each epoch's end (`GROWTH_COLUMNS`)."""
        with self._lock:
            return pd.DataFrame(self._growth, columns=GROWTH_COLUMNS)

    def layer_table(self) -> pd.DataFrame:
        """The per-layer sparsity of every run (`layers`), stacked with a ``run`` column."""
        with self._lock:
            tables = [table.assign(run=number) for number, table in self.layers.items()]
        if not tables:
            return pd.DataFrame(columns=LAYER_COLUMNS)
        return pd.concat(tables, ignore_index=True)[LAYER_COLUMNS]

    def results(self) -> pd.DataFrame:
        """The runs that finished (status ``done``), as result rows of the lab's tables."""
        runs = self.runs
        return runs[runs["status"] == "done"].reset_index(drop=True)

    def sweep_table(self, number: int) -> pd.DataFrame:
        """Sweep `number`'s runs, its knobs' values first (as written to ``sweep-<number>.csv``)."""
        runs = self.runs
        rows = runs[runs["sweep"] == number]
        if rows.empty:
            raise KeyError(f"no sweep #{number}; sweeps: {sorted(set(runs['sweep'].dropna().astype(int)))}")
        knobs = pd.DataFrame([_parse_cell(text) for text in rows["sweep_values"]], index=rows.index)
        rest = rows.drop(columns=[name for name in knobs.columns if name in rows.columns])
        return pd.concat([knobs, rest], axis=1).reset_index(drop=True)

    # -- jobs ------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a run or a sweep is training."""
        job = self._job
        return job is not None and not job.ended.is_set()

    def train(self, *, wait: bool = True, raise_errors: bool = False) -> dict[str, Any] | None:
        """Train a new task with the current settings in the background; what Train does.

        With `wait` (the default from Python; a click does not wait) returns the run's row of
        `runs` once it has ended, or None if it was stopped before it started. Bad settings raise
        ValueError before anything trains (from a click: shown in the status line). On an error
        in the run the status line shows it, `error` holds it and the row says ``failed``;
        `raise_errors` re-raises it (the notebook's own runs), since an exception in a worker
        thread reaches no cell. Raises `ExplorerBusy` while another job trains.
        """
        settings = self.settings
        try:
            settings.spec(self.device, self.seed, label="")
        except (TypeError, ValueError) as exc:
            return self._refuse(exc, wait)
        job = self._start(f"run {html.escape(settings.label())}", lambda job: self._run_one(job, settings))
        if not wait:
            return None
        self.wait(raise_errors=raise_errors)
        return job.rows[-1] if job.rows else None

    def sweep(self, knobs: Mapping[str, str | Sequence[float]] | None = None, *, wait: bool = True,
              raise_errors: bool = False) -> pd.DataFrame | None:
        """Train every cell of a sweep in the background, one run after another; what Sweep does.

        `knobs`: ``{knob: values}`` (`Sweep.parse`), shown on the sweep controls first; None
        takes the sweep controls as they are. Every other setting is the controls'. Bad knobs or
        values raise ValueError before anything trains (from a click: shown in the status line).
        With `wait`, returns the sweep's table (`sweep_table`) once it has ended.
        """
        try:
            if knobs is not None:
                self._show_knobs(Sweep.parse(knobs))
            sweep, base = self._read_sweep()
        except (TypeError, ValueError) as exc:
            return self._refuse(exc, wait)
        job = self._start(f"a sweep of {html.escape(sweep.describe())}", lambda job: self._sweep(job, sweep, base))
        if not wait:
            return None
        self.wait(raise_errors=raise_errors)
        return self.sweep_table(job.rows[0]["sweep"]) if job.rows else None

    def _refuse(self, exc: Exception, raise_it: bool) -> None:
        """Bad input: shown in the status line, and raised for a caller that waits (not a click)."""
        self._show_error(exc, details=False)
        if raise_it:
            raise exc

    def stop(self) -> None:
        """End the run (and the sweep) after the current step; what Stop does. Nothing to stop: no-op."""
        job = self._job
        if job is not None and self.busy:
            job.stop.set()
            self._set_status(f"stopping {job.what} after the current step…")

    def wait(self, timeout: float | None = None, *, raise_errors: bool = False) -> bool:
        """Wait until the current job has ended (at most `timeout` seconds); True if it has.
        Interrupting the kernel while waiting stops the job. `raise_errors`: re-raise the first
        error of its runs."""
        job = self._job
        if job is None or job.thread is None:
            return True
        try:
            job.thread.join(timeout)
        except KeyboardInterrupt:
            job.stop.set()
            job.thread.join()
            raise
        if raise_errors and job.errors and not job.thread.is_alive():
            raise job.errors[0]
        return not job.thread.is_alive()

    def _start(self, what: str, work: Callable[[_Job], None]) -> _Job:
        with self._lock:  # one job at a time: checked and started as one step
            if self.busy:
                raise ExplorerBusy(f"the explorer is training {self._job.what}: press Stop, or wait for it "
                                   "(explorer.wait()), before starting another")
            job = self._job = _Job(what)
            job.thread = threading.Thread(target=self._work, args=(job, work), name=f"piggylab explorer: {what}",
                                          daemon=True)
            self.error = None
            self._set_running(True)
            job.thread.start()
        return job

    def _work(self, job: _Job, work: Callable[[_Job], None]) -> None:
        try:
            work(job)
        except Exception as exc:  # noqa: BLE001 - shown to the user: a thread's exception reaches no cell
            job.errors.append(exc)
            self._show_error(exc)
        finally:
            store_view_state(self.curve)
            with self._lock:  # the buttons come back with the job's end, before another can start
                job.ended.set()
                self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.train_button.disabled = self.sweep_button.disabled = running
        self.stop_button.disabled = not running

    # -- one run ---------------------------------------------------------------------
    def _data(self, task: str) -> TaskData:
        if task not in self._datasets:
            self._datasets[task] = load_data(task, scale=self.scale, seed=self.seed)
        return self._datasets[task]

    def _run_one(self, job: _Job, settings: RunSettings, *, sweep: int | None = None,
                 values: Mapping[str, float] | None = None, prefix: str = "") -> dict[str, Any] | None:
        """Train one run in this (worker) thread and record it; None if stopped before it started.
        Bad settings raise ValueError before the run gets a number."""
        spec = settings.spec(self.device, self.seed, label="")
        number = next(self._numbers)
        spec = replace(spec, label=f"#{number} {settings.method}")
        task = f"{settings.task}-{number}"
        row = {"run": number, "sweep": sweep, "sweep_values": _cell_text(values) if values else None}
        live = None
        try:
            self._set_status(f"{prefix}loading {html.escape(settings.task)}…")
            data = self._data(settings.task)
            loaders = make_loaders(data, self.batch_size, seed=self.seed)
            if job.stop.is_set():
                self._set_status(f"{prefix}stopped: run #{number} was stopped before it started")
                return None
            live = self._start_curve(number, task, settings, len(loaders[0]), prefix)
            callbacks = {"on_step_end": functools.partial(self._on_step, job, live),
                         "on_epoch_end": functools.partial(self._on_epoch, job, live)}
            result = run(self.net, data, spec, task=task, loaders=loaders, callbacks=callbacks, cache=None)
        except Exception as exc:  # noqa: BLE001 - the run is recorded as failed, its error shown
            if task in self.net.tasks:
                self.net.remove_task(task)
            if live is not None:  # keep its curve, marked, to show how it went wrong
                live.loss_trace.name += " (failed)"
            row.update({"status": "failed", **settings.row(), "error": f"{type(exc).__name__}: {exc}"})
            job.errors.append(exc)
            self._record(job, row, None, [])
            self._show_error(exc)
            return row
        row.update({**result.row, **settings.row(), "error": None})
        layers = None
        if task in self.net.tasks:
            layers = layer_sparsity(self.net, task)
            self._tasks[number] = task
        self._draw(job, live, final=True)
        self._record(job, row, layers, live.growth)
        self._set_status(f"{prefix}{_ending(row, live)}")
        return row

    def _record(self, job: _Job, row: dict[str, Any], layers: pd.DataFrame | None,
                growth: list[dict[str, Any]]) -> None:
        """Add a finished run to the tables, save them and show them."""
        with self._lock:
            self._rows.append(row)
            if layers is not None:
                self.layers[row["run"]] = layers
            self._growth += growth
        job.rows.append(row)
        runs = self.runs
        self._save(runs)
        self.runs_table.value = runs_html(runs)
        if layers is not None:
            draw_sparsity(self.sparsity_figure, layers, f"Mask sparsity per layer: run #{row['run']}, "
                          f"{html.escape(row['task'])} ({row['method']}), {row['status']}")
            self._render("sparsity")
        self._update_mask_runs(select=row["run"] if growth or row["run"] in self._tasks else None)

    def _save(self, runs: pd.DataFrame) -> None:
        """Write the runs table (`runs`, as `runs` is now), the layer table and the growth."""
        if self.folder is None:
            return
        write_table(runs, self.folder, RUNS)
        write_table(self.layer_table(), self.folder, LAYERS)
        write_table(self.growth, self.folder, GROWTH)

    # -- a sweep ---------------------------------------------------------------------
    def _show_knobs(self, sweep: Sweep) -> None:
        knobs = [*sweep.knobs, *[("", ())] * (MAX_KNOBS - len(sweep.knobs))]
        for i, (name, values) in enumerate(knobs, start=1):
            self.sweep_controls[f"knob_{i}"].value = name
            self.sweep_controls[f"values_{i}"].value = ", ".join(map(str, values))  # str: exactly the float

    def _read_sweep(self) -> tuple[Sweep, RunSettings]:
        """The sweep on the controls and the settings it varies, every cell's settings checked."""
        s = self.sweep_controls
        chosen = [(s[f"knob_{i}"].value, s[f"values_{i}"].value) for i in range(1, MAX_KNOBS + 1)]
        names = [name for name, _ in chosen if name]
        if len(set(names)) < len(names):
            raise ValueError(f"knob {names[0]!r} is chosen twice; choose two different knobs")
        sweep = Sweep.parse({name: values for name, values in chosen if name})
        base = self.settings
        unused = [n for n in sweep.names if n in MASK_SETTINGS and base.method != "piggyback"]
        if unused:
            raise ValueError(f"knob {unused[0]!r} is a piggyback setting: method {base.method!r} does not use it")
        for _, values, settings in sweep.cells(base):
            try:
                settings.spec(self.device, self.seed, label="")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"sweep cell {_cell_text(values)}: {exc}") from None
        return sweep, base

    def _sweep(self, job: _Job, sweep: Sweep, base: RunSettings) -> None:
        number = next(self._sweep_numbers)
        cells = sweep.cells(base)
        xs, ys = sweep.axes()
        start_sweep(self.sweep_figure, f"Sweep #{number}: {html.escape(base.label())}, {base.epochs} epoch(s) "
                    "unless swept", (sweep.names[0], [_number(x) for x in xs]),
                    (sweep.names[1], [_number(y) for y in ys]) if ys else ("", [""]))
        self._render("sweep_figure")
        start = time.perf_counter()
        for k, ((i, j), values, settings) in enumerate(cells, start=1):
            if job.stop.is_set():
                break
            prefix = f"sweep #{number}, run {k} of {len(cells)} ({html.escape(_cell_text(values))}): "
            last = self._run_one(job, settings, sweep=number, values=values, prefix=prefix)
            if last is None:
                break
            done = last["status"] == "done"
            fill_sweep_cell(self.sweep_figure, i, j, (last["val_accuracy"], last["sparsity"]) if done else None,
                            last["status"])
            self._render("sweep_figure")
            if self.folder is not None:
                write_table(self.sweep_table(number), self.folder, f"sweep-{number}")
        self._set_status(_sweep_ending(number, sweep, job.rows, len(cells), time.perf_counter() - start,
                                       stopped=job.stop.is_set()))


    # -- drawing ---------------------------------------------------------------------
    def _start_curve(self, number: int, task: str, settings: RunSettings, steps_per_epoch: int,
                     prefix: str) -> _LiveRun:
        loss, accuracy = add_run_traces(self.curve, number, f"#{number} {settings.label()}")
        return _LiveRun(number, task, settings, steps_per_epoch, loss, accuracy, prefix)

    def _on_step(self, job: _Job, live: _LiveRun, trainer: Trainer, record: dict) -> None:
        if job.stop.is_set():
            trainer.stop()
        live.epoch = record["epoch"]
        live.steps.append(record["step"])
        live.losses.append(record["loss"])
        self._draw(job, live)

    def _on_epoch(self, job: _Job, live: _LiveRun, _trainer: Trainer, row: dict) -> None:
        epoch = row["step"] / live.steps_per_epoch  # a stopped run's last epoch is a fraction of one
        live.epochs.append(epoch)
        live.accuracies.append(row["val_acc"])
        if live.settings.method == "piggyback":
            layers = layer_sparsity(self.net, live.task)
            live.growth += layers.assign(run=live.number, epoch=epoch, step=row["step"])[GROWTH_COLUMNS].to_dict(
                "records")
        self._draw(job, live)

    def _draw(self, job: _Job, live: _LiveRun, final: bool = False) -> None:
        """Send the live run's points and progress to the front end: at most every `refresh_s`, and
        at the run's end (`final`). Every `STATE_EVERY_S` the curve's widget state is stored too (a
        view opened mid-run starts from it); not at every draw: that sends the whole figure."""
        now = time.perf_counter()
        if not final and now - live.last_draw < self.refresh_s:
            return
        live.last_draw = now
        with self.curve.batch_update():
            live.loss_trace.x, live.loss_trace.y = list(live.steps), list(live.losses)
            live.acc_trace.x, live.acc_trace.y = list(live.epochs), list(live.accuracies)
        if final or now - live.last_state >= STATE_EVERY_S:
            live.last_state = now
            store_view_state(self.curve)
        self._set_status(live.progress(stopping=job.stop.is_set()))

    def _update_mask_runs(self, select: int | None = None) -> None:
        """The runs the mask view can show: those with a mask in memory or a growth record."""
        with self._lock:
            grown = {int(r["run"]) for r in self._growth}
            rows = [r for r in self._rows if int(r["run"]) in grown or int(r["run"]) in self._tasks]
        options = [(f"#{int(r['run'])} {r['task']} ({r['method']}, {r['status']})", int(r["run"])) for r in rows]
        current = self.mask_run.value
        keep = current if current in {n for _, n in options} else (options[-1][1] if options else None)
        self._choosing_mask = True
        try:
            self.mask_run.options = options
            self.mask_run.value = select if select is not None else keep
        finally:
            self._choosing_mask = False
        self._show_mask()

    def _show_mask(self) -> None:
        """Draw the chosen run's mask of the chosen layer, and its sparsity's growth."""
        number, layer = self.mask_run.value, self.mask_layer.value
        if number is None or layer is None:
            return
        task = self._tasks.get(number)
        in_memory = task is not None and task in self.net.tasks
        draw_mask(self.mask_figure, self.net.masks(task)[layer] if in_memory else None, layer, number)
        growth = self.growth
        draw_growth(self.growth_figure, growth[growth["run"] == number], number, layer)
        self._render("mask", "growth")

    def _set_status(self, message: str, error: bool = False) -> None:
        colour = "#b00020" if error else "inherit"
        self.status.value = f'<div style="color: {colour}">{message}</div>'

    def _show_error(self, exc: BaseException, details: bool = True) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        trace = "".join(traceback.format_exception(exc))
        more = (f"<details><summary>traceback</summary><pre>{html.escape(trace)}</pre></details>"
                if details else "")
        self._set_status(f"<b>error</b>: {html.escape(self.error)}{more}", error=True)


# -- endings --------------------------------------------------------------------------------

def _ending(row: dict[str, Any], live: _LiveRun) -> str:
    """The status line of a run that ended: done or stopped, with its numbers."""
    head = f"done: run #{row['run']}" if row["status"] == "done" else (
        f"stopped: run #{row['run']} after step {row['steps']} of {live.total_steps}")
    return (f"{head}, {html.escape(live.settings.label())}: test accuracy {row['accuracy']:.1%}, val accuracy "
            f"{row['val_accuracy']:.1%}, mask sparsity {row['sparsity']:.2%}, {row['train_s']:.1f} s")


def _sweep_ending(number: int, sweep: Sweep, rows: list[dict[str, Any]], cells: int, seconds: float, *,
                  stopped: bool) -> str:
    done = [r for r in rows if r["status"] == "done"]
    failed = sum(r["status"] == "failed" for r in rows)
    head = (f"stopped: sweep #{number} after {len(rows)} of {cells} runs" if stopped
            else f"done: sweep #{number}, {len(rows)} runs")
    text = f"{head} ({html.escape(sweep.describe())}) in {seconds:.1f} s"
    if failed:
        text += f", {failed} failed"
    if done:
        best = max(done, key=lambda r: r["val_accuracy"])
        text += (f"; best validation accuracy {best['val_accuracy']:.1%} at {html.escape(best['sweep_values'])} "
                 f"(run #{best['run']}, mask sparsity {best['sparsity']:.2%})")
    return text


# -- files ----------------------------------------------------------------------------------

def _read_folder(folder: Path | None) -> tuple[list[dict[str, Any]], dict[int, pd.DataFrame], list[dict[str, Any]]]:
    """The runs, per-run layer tables and growth records kept in `folder` (nothing if absent)."""
    if folder is None or not (folder / f"{RUNS}.csv").exists():
        return [], {}, []
    runs = _read_csv(folder / f"{RUNS}.csv", RUN_COLUMNS)
    layers = _read_csv(folder / f"{LAYERS}.csv", LAYER_COLUMNS)
    growth = _read_csv(folder / f"{GROWTH}.csv", GROWTH_COLUMNS)
    runs["sweep"] = runs["sweep"].astype("Int64")
    rows = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in runs.to_dict("records")]
    tables = {int(n): t.drop(columns="run").reset_index(drop=True) for n, t in layers.groupby("run", sort=False)}
    return rows, tables, growth.to_dict("records")


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=columns)
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read the explorer's table {path}: {exc}; move it away to start afresh") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not an explorer table: it has no column(s) {', '.join(missing)}; move it away "
                         "to start afresh")
    return table


def _parse_cell(text: str) -> dict[str, float]:
    """``lr_scores=0.001, threshold=0.005`` -> {"lr_scores": 0.001, "threshold": 0.005}."""
    return {name: float(value) for name, value in (part.split("=") for part in text.split(", "))}
