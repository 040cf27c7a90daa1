"""The explorer of notebook 07: an ipywidgets UI to train one task at a time and watch it learn.

What it is
----------
`Explorer` puts the choices of a Piggyback run on widgets (task, method, mask kind, score
init, init scale, threshold, learning rates, epochs, BN mode), trains on a button press, and
shows, all in one `ipywidgets.VBox` (`Explorer.widget`):

- a status line (what is training, then the test accuracy, or the error of a failed run);
- a live training curve, a plotly ``FigureWidget`` (`Explorer.curve`): loss per step and
  validation accuracy per epoch, one pair of traces per run, so runs can be compared;
- the per-layer mask sparsity of the latest run as bars (`Explorer.sparsity_figure`);
- the table of every run made since the explorer was created (`Explorer.runs`).

Every run adds a fresh task (``<task>-<run number>``) to one shared `PiggybackNet`, so the
backbone is loaded once per kernel (`default_backbone` is cached) and runs never interfere:
the backbone is frozen and each run has its own mask and head. Datasets are cached by
`piggylab.datasets` itself. Everything is driven from Python too: ``explorer.set(task=...,
epochs=1)`` then ``explorer.train()`` is exactly what a click does, which is how the tests and
the notebook use it headlessly.

How the live curve works
------------------------
Training runs synchronously in the kernel, inside the button's callback (no thread). The
trainer's ``on_step_end``/``on_epoch_end`` callbacks append to the run's traces; every
`refresh_s` seconds (and at each epoch end and at the end of the run) the traces are sent
to the front end. Messages from the kernel to the browser travel on the IOPub channel while
the callback runs, so the figure and the status line update live; only messages from the
browser to the kernel (other clicks, widget edits) wait until the run is over, which is why
the Train button is disabled meanwhile.

What it is not
--------------
Not a training library (it calls `Trainer`), not asynchronous (the kernel is busy while a run
trains), and not a place to store results: the notebook writes them with `piggylab.runs`.
"""

from __future__ import annotations

import functools
import html
import itertools
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import nn

from .analysis import SPARSITY_COLUMNS, layer_sparsity
from .backbones import TINY_CHECKPOINT, load_backbone
from .datasets import EMBEDDED_TASKS, load_data, make_loaders
from .masked import DEFAULT_SCALE, DEFAULT_THRESHOLD, INIT_SCHEMES, MASK_KINDS, MaskConfig
from .piggyback import BN_MODES, METHODS, PiggybackNet
from .train import TrainConfig, Trainer, evaluate, fit_task, resolve_device

__all__ = ["CSS_CLASSES", "RUN_COLUMNS", "Explorer", "RunSettings", "default_backbone"]

CSS_CLASSES: dict[str, str] = {
    "task": "piggylab-task", "method": "piggylab-method", "mask_kind": "piggylab-mask-kind",
    "init": "piggylab-init", "scale": "piggylab-scale", "threshold": "piggylab-threshold",
    "lr": "piggylab-lr", "lr_scores": "piggylab-lr-scores", "epochs": "piggylab-epochs",
    "bn_mode": "piggylab-bn-mode", "train": "piggylab-train", "status": "piggylab-status",
    "curve": "piggylab-curve", "sparsity": "piggylab-sparsity", "runs": "piggylab-runs",
    "explorer": "piggylab-explorer",
}
"""CSS class of each part of the explorer, for browser tests (the control's name -> class)."""

MASK_SETTINGS = ("mask_kind", "init", "scale", "threshold", "lr_scores")
"""Settings that only piggyback uses: the other methods train with the mask all ones."""

RUN_COLUMNS = ["run", "task", "method", "mask_kind", "init", "scale", "threshold", "lr", "lr_scores", "epochs",
               "bn_mode", "accuracy", "val_accuracy", "sparsity", "wall_time_s"]
"""Columns of `Explorer.runs`; settings a method does not use are left empty (NaN/None)."""


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


@dataclass(frozen=True)
class RunSettings:
    """What one press of Train runs: the explorer's controls, read at the moment of the press."""

    task: str
    method: str = "piggyback"
    mask_kind: str = "binary"
    init: str = "constant"
    scale: float = DEFAULT_SCALE["constant"]
    threshold: float = DEFAULT_THRESHOLD
    lr: float = 1e-3
    lr_scores: float = 1e-3
    epochs: int = 3
    bn_mode: str = "frozen"

    def mask_config(self) -> MaskConfig:
        """The task's mask: as chosen for piggyback; the default (all ones) for the other methods."""
        if self.method != "piggyback":
            return MaskConfig()
        return MaskConfig(kind=self.mask_kind, threshold=self.threshold, init=self.init, scale=self.scale)

    def train_config(self, device: str, seed: int) -> TrainConfig:
        """The trainer's configuration (fine-tuning always trains BN, so it gets no `bn_mode`)."""
        return TrainConfig(self.method, epochs=self.epochs, lr=self.lr, lr_scores=self.lr_scores, device=device,
                           seed=seed, bn_mode=None if self.method == "finetune" else self.bn_mode)

    def used(self) -> dict[str, Any]:
        """The settings as a row, with those the method does not use set to None."""
        row = asdict(self)
        if self.method != "piggyback":
            row.update(dict.fromkeys(MASK_SETTINGS))
        if self.method == "finetune":  # fine-tuning trains every weight and the BN (the paper's baseline)
            row["bn_mode"] = None
        return row

    def label(self) -> str:
        mask = f", {self.mask_kind} mask" if self.method == "piggyback" else ""
        return f"{self.task} ({self.method}{mask})"


@dataclass
class _LiveRun:
    """The run being trained: its points so far and where they are drawn."""

    settings: RunSettings
    steps_per_epoch: int
    loss_trace: Any
    acc_trace: Any
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    last_draw: float = 0.0

    def progress(self) -> str:
        epoch = min(len(self.epochs) + 1, self.settings.epochs)
        text = (f"training {html.escape(self.settings.label())}: epoch {epoch}/{self.settings.epochs}, "
                f"step {len(self.steps)}/{self.steps_per_epoch * self.settings.epochs}")
        if self.losses:
            text += f", loss {self.losses[-1]:.3f}"
        if self.accuracies:
            text += f", val accuracy {self.accuracies[-1]:.1%}"
        return text


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


class Explorer:
    """Widgets to train tasks of one shared `PiggybackNet` and compare the runs; see the module docstring.

    >>> explorer = Explorer(scale=0.1)
    >>> explorer                      # in a notebook: shows the UI
    >>> explorer.set(task="greek", mask_kind="ternary", epochs=1)
    >>> explorer.train()              # what the Train button does
    >>> explorer.runs                 # one row per run

    `backbone`: a classifier to mask (its last Linear layer is replaced by the task heads);
    None for the lab's tiny backbone (`default_backbone`). `scale` sizes the embedded datasets
    (1.0: their default sizes). `refresh_s`: at most how often the live curve is redrawn.
    """

    def __init__(self, backbone: nn.Module | None = None, *, tasks: Sequence[str] = EMBEDDED_TASKS,
                 scale: float = 1.0, batch_size: int = 64, device: str = "auto", seed: int = 0,
                 refresh_s: float = 0.25) -> None:
        if not tasks:
            raise ValueError("tasks must name at least one task")
        if backbone is None:
            backbone, backbone_note = default_backbone()
        else:
            backbone_note = type(backbone).__name__
        self.net = PiggybackNet(backbone, backbone_name=backbone_note)
        self.scale, self.batch_size, self.seed, self.refresh_s = scale, batch_size, seed, refresh_s
        self.device = str(resolve_device(device))
        self.layers: dict[int, pd.DataFrame] = {}
        """Per run number: the per-layer mask sparsity of that run (`layer_sparsity`)."""
        self.error: str | None = None
        """The error of the latest run, or None if it succeeded."""
        self._rows: list[dict[str, Any]] = []
        self._numbers = itertools.count(1)  # run numbers, failed runs included
        self._live: _LiveRun | None = None

        self.controls: dict[str, widgets.ValueWidget] = _controls()
        self.controls["task"].options = list(tasks)
        self.controls["task"].value = tasks[0]
        self.button = widgets.Button(description="Train", button_style="primary", icon="play",
                                     tooltip="train a new task with these settings")
        self.status = widgets.HTML()
        self.curve = go.FigureWidget(_curve_layout())
        self.sparsity_figure = go.FigureWidget(_sparsity_layout())
        self.runs_table = widgets.HTML(value=_runs_html(self.runs))
        self.widget = self._assemble(backbone_note)

        self.button.on_click(lambda _button: self.train())
        self.controls["method"].observe(lambda _change: self._enable_method_settings(), "value")
        self.controls["init"].observe(self._init_changed, "value")
        self._enable_method_settings()
        self._set_status(f"ready on {html.escape(self.device)}: choose the settings and press Train")

    # -- layout ----------------------------------------------------------------------
    def _assemble(self, backbone_note: str) -> widgets.VBox:
        c = self.controls
        for name, control in (*c.items(), ("train", self.button), ("status", self.status)):
            control.add_class(CSS_CLASSES[name])
        curve_box = widgets.Box([self.curve])
        sparsity_box = widgets.Box([self.sparsity_figure])
        runs_box = widgets.VBox([widgets.HTML("<b>Runs since the explorer started</b>"), self.runs_table])
        for name, box in (("curve", curve_box), ("sparsity", sparsity_box), ("runs", runs_box)):
            box.add_class(CSS_CLASSES[name])
        header = widgets.HTML(f"<b>Piggyback explorer</b>: backbone {html.escape(backbone_note)}; "
                              f"data scale {self.scale:g}, batch size {self.batch_size}")
        columns = widgets.HBox([
            widgets.VBox([c["task"], c["method"], c["epochs"], c["bn_mode"], c["lr"]]),
            widgets.VBox([c["mask_kind"], c["init"], c["scale"], c["threshold"], c["lr_scores"]]),
        ])
        box = widgets.VBox([header, columns, widgets.HBox([self.button, self.status]), curve_box, sparsity_box,
                            runs_box])
        box.add_class(CSS_CLASSES["explorer"])
        return box

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        for figure in (self.curve, self.sparsity_figure):
            _store_view_state(figure)
        return self.widget._repr_mimebundle_(**kwargs)

    def _enable_method_settings(self) -> None:
        method = self.controls["method"].value
        for name in MASK_SETTINGS:
            self.controls[name].disabled = method != "piggyback"
        self.controls["bn_mode"].disabled = method == "finetune"

    def _init_changed(self, change: dict) -> None:
        self.controls["scale"].value = DEFAULT_SCALE[change["new"]]

    # -- settings --------------------------------------------------------------------
    def set(self, **values: Any) -> None:
        """Set controls by `RunSettings` field name, as a user would (e.g. ``set(epochs=1)``), in the
        order given: choosing an `init` resets `scale` to that init's default, so give `scale` after it."""
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
        """One row per successful run since the explorer was created (`RUN_COLUMNS`)."""
        return pd.DataFrame(self._rows, columns=RUN_COLUMNS)

    def layer_table(self) -> pd.DataFrame:
        """The per-layer sparsity of every run (`layers`), stacked with a ``run`` column."""
        tables = [table.assign(run=number) for number, table in self.layers.items()]
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*SPARSITY_COLUMNS, "run"])

    def results(self) -> pd.DataFrame:
        """The runs as result rows of the lab's tables: `runs` with a ``label`` naming each run."""
        runs = self.runs
        return runs.assign(label=[f"#{number} {method}" for number, method in zip(runs["run"], runs["method"])])

    # -- training --------------------------------------------------------------------
    def train(self, raise_errors: bool = False) -> dict[str, Any] | None:
        """What the Train button does: train a new task with the current settings.

        Returns the run's row of `runs`. On an error the status line shows it and `error`
        holds it; the error is re-raised only with `raise_errors` (the notebook's own runs),
        since an exception escaping a button callback would only reach the kernel's log.
        """
        self.button.disabled = True
        self.error = None
        try:
            return self._run(self.settings)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
            self.error = f"{type(exc).__name__}: {exc}"
            details = html.escape(traceback.format_exc())
            self._set_status(f"<b>error</b>: {html.escape(self.error)}"
                             f"<details><summary>traceback</summary><pre>{details}</pre></details>", error=True)
            if raise_errors:
                raise
            return None
        finally:
            for figure in (self.curve, self.sparsity_figure):
                _store_view_state(figure)
            self.button.disabled = False

    def _run(self, settings: RunSettings) -> dict[str, Any]:
        number = next(self._numbers)
        name = f"{settings.task}-{number}"
        self._set_status(f"loading {html.escape(settings.task)}…")
        data = load_data(settings.task, scale=self.scale, seed=self.seed)
        train_loader, val_loader, test_loader = make_loaders(data, self.batch_size, seed=self.seed)
        config = settings.train_config(self.device, self.seed)  # validates lr and epochs
        self.net.add_task(name, data.num_classes, mask=settings.mask_config(), class_names=list(data.classes),
                          seed=self.seed)
        try:
            self._live = self._start_curve(number, settings, len(train_loader))
            self._set_status(self._live.progress())
            start = time.perf_counter()
            model, history = fit_task(self.net, name, train_loader, val_loader, config, progress=False,
                                      callbacks={"on_step_end": self._on_step, "on_epoch_end": self._on_epoch})
            self._draw(force=True)
            accuracy = evaluate(model, test_loader, task=None if settings.method == "finetune" else name,
                                device=self.device)
            wall_time = time.perf_counter() - start
        except BaseException:
            self.net.remove_task(name)
            if self._live is not None:  # keep its curve, marked, to show how it went wrong
                self._live.loss_trace.name += " (failed)"
            raise
        finally:
            self._live = None
        layers = layer_sparsity(self.net, name)
        sparsity = float(layers["zeros"].sum() / layers["weights"].sum())
        row = {"run": number, **settings.used(), "accuracy": accuracy,
               "val_accuracy": float(history["val_acc"].iloc[-1]), "sparsity": sparsity, "wall_time_s": wall_time}
        self._rows.append(row)
        self.layers[number] = layers
        self._show_sparsity(number, settings, layers)
        self.runs_table.value = _runs_html(self.runs)
        self._set_status(f"done: run #{number}, {html.escape(settings.label())}: test accuracy {accuracy:.1%}, "
                         f"mask sparsity {sparsity:.2%}, {wall_time:.1f} s")
        return row

    # -- drawing ---------------------------------------------------------------------
    def _start_curve(self, number: int, settings: RunSettings, steps_per_epoch: int) -> _LiveRun:
        colour = qualitative.Plotly[(number - 1) % len(qualitative.Plotly)]
        name = f"#{number} {settings.label()}"
        common = {"name": name, "legendgroup": str(number), "line": {"color": colour}, "mode": "lines+markers"}
        self.curve.add_scatter(x=[], y=[], marker={"size": 4}, row=1, col=1, **common)
        self.curve.add_scatter(x=[], y=[], marker={"size": 8}, showlegend=False, row=1, col=2, **common)
        return _LiveRun(settings, steps_per_epoch, self.curve.data[-2], self.curve.data[-1])

    def _on_step(self, _trainer: Trainer, record: dict) -> None:
        live = self._live
        live.steps.append(record["step"])
        live.losses.append(record["loss"])
        self._draw()

    def _on_epoch(self, _trainer: Trainer, row: dict) -> None:
        live = self._live
        live.epochs.append(row["epoch"])
        live.accuracies.append(row["val_acc"])
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        """Send the live run's points and progress to the front end, at most every `refresh_s`."""
        live = self._live
        now = time.perf_counter()
        if not force and now - live.last_draw < self.refresh_s:
            return
        live.last_draw = now
        with self.curve.batch_update():
            live.loss_trace.x, live.loss_trace.y = list(live.steps), list(live.losses)
            live.acc_trace.x, live.acc_trace.y = list(live.epochs), list(live.accuracies)
        if force:  # each epoch's end: a view opened mid-run starts from here
            _store_view_state(self.curve)
        self._set_status(live.progress())

    def _show_sparsity(self, number: int, settings: RunSettings, layers: pd.DataFrame) -> None:
        with self.sparsity_figure.batch_update():
            bars = self.sparsity_figure.data[0]
            bars.x, bars.y = list(layers["depth"]), list(layers["sparsity"])
            bars.customdata = list(zip(layers["layer"], layers["kind"], layers["weights"]))
            self.sparsity_figure.layout.title.text = f"Mask sparsity per layer: run #{number}, {settings.label()}"

    def _set_status(self, message: str, error: bool = False) -> None:
        colour = "#b00020" if error else "inherit"
        self.status.value = f'<div style="color: {colour}">{message}</div>'


def _store_view_state(figure: go.FigureWidget) -> None:
    """Store the figure as it is now in the widget state that new views of it start from.

    plotly's FigureWidget sends edits (new traces, new points, a new title) as one-off messages
    that update the views on screen, but its synced state (``_widget_data``, ``_widget_layout``)
    is refreshed only when the figure itself is displayed. A view made later (the browser tab
    reloaded, the notebook closed and reopened, the figure shown inside a box) would start from
    that stale state: an empty training curve. Its own `_repr_mimebundle_` does the refresh.
    """
    figure._repr_mimebundle_()


def _curve_layout() -> go.Figure:
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Validation accuracy"),
                           column_widths=[0.6, 0.4], horizontal_spacing=0.1)
    figure.update_xaxes(title_text="step", row=1, col=1)
    figure.update_xaxes(title_text="epoch", dtick=1, row=1, col=2)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_layout(height=340, margin={"t": 40, "b": 40, "l": 50, "r": 10}, template="plotly_white",
                         legend={"orientation": "h", "y": -0.25})
    return figure


def _sparsity_layout() -> go.Figure:
    bars = go.Bar(x=[], y=[], name="sparsity", hovertemplate=("depth %{x}: %{customdata[0]} (%{customdata[1]}, "
                                                               "%{customdata[2]} weights)<br>%{y:.2%} zeros"
                                                               "<extra></extra>"))
    figure = go.Figure(bars)
    figure.update_layout(title_text="Mask sparsity per layer: train a task to see its mask", height=300,
                         xaxis_title="depth (masked layer, input to output)", yaxis_title="zeros in the mask",
                         yaxis_tickformat=".1%", template="plotly_white",
                         margin={"t": 40, "b": 40, "l": 60, "r": 10})
    return figure


def _runs_html(runs: pd.DataFrame) -> str:
    if runs.empty:
        return "<i>no runs yet</i>"
    def number(spec: str):
        return lambda value: "–" if pd.isna(value) else format(value, spec)

    formats = {"accuracy": ".1%", "val_accuracy": ".1%", "sparsity": ".2%", "wall_time_s": ".1f", "lr": ".0e",
               "lr_scores": ".0e", "threshold": "g", "scale": "g"}
    table = runs.to_html(index=False, na_rep="–", formatters={k: number(v) for k, v in formats.items()}, border=0)
    return (f"<style>.piggylab-runs td, .piggylab-runs th {{padding: 1px 8px; text-align: right}}</style>{table}")
