"""Plotly figures of the lab: training curves, accuracy and storage bars, sparsity maps, the dataset gallery.

Every function takes a pandas DataFrame produced by piggylab (a training history from
`Trainer.fit`, result rows from `piggylab.experiments`, a sparsity table from
`piggylab.analysis`) and returns a `plotly.graph_objects.Figure`; nothing here trains,
measures or writes files. `LiveCurve` draws training curves while tasks train: in a live
Jupyter kernel it redraws one output in place, and wherever it runs (JupyterLab, papermill,
a plain script) `LiveCurve.figure()` gives the finished static figure.

Accuracies and sparsities are fractions in the DataFrames and shown as percentages.

`gallery` draws sample images of the embedded tasks (`piggylab.datasets`), the one figure made
from task names rather than a DataFrame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .datasets import EMBEDDED_SOURCE, EMBEDDED_TASKS, PAPER_DATASETS, embedded_task

METRIC_TITLES = {"loss": "training loss", "train_acc": "training accuracy (%)", "val_acc": "validation accuracy (%)",
                 "sparsity": "mask sparsity (%)", "lr": "learning rate"}
"""Axis titles of the history columns `training_curves` can draw."""

PERCENT_METRICS = ("train_acc", "val_acc", "sparsity")
"""History columns holding fractions, drawn as percentages."""

_PALETTE = px.colors.qualitative.Plotly


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def training_curves(histories: pd.DataFrame, metrics: Sequence[str] = ("loss", "val_acc"), *, run: str = "run",
                    x: str = "epoch", steps: pd.DataFrame | None = None, title: str = "Training curves") -> go.Figure:
    """One panel per metric, one line per run, against the epoch (or the training step: `x="step"`).

    `histories`: `Trainer.fit` histories stacked with a `run` column (as
    `piggylab.experiments.compare_methods` returns them). With `steps` (columns run, step,
    loss) and `x="step"`, the loss panel shows every training step instead of epoch means.
    """
    unknown = [m for m in metrics if m not in METRIC_TITLES]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRIC_TITLES)}")
    if x not in ("epoch", "step"):
        raise ValueError(f"x must be 'epoch' or 'step', got {x!r}")
    runs = list(dict.fromkeys([*histories[run], *([] if steps is None else steps[run])]))
    colours = _colours(runs)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRIC_TITLES[m] for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        per_step = metric == "loss" and steps is not None and x == "step"
        for name in runs:
            part = steps[steps[run] == name] if per_step else histories[histories[run] == name]
            y = part[metric] * 100 if metric in PERCENT_METRICS else part[metric]
            fig.add_trace(go.Scatter(x=list(part[x]), y=list(y), mode="lines" if per_step else "lines+markers",
                                     name=name, legendgroup=name, showlegend=col == 1,
                                     line=dict(color=colours[name])), row=1, col=col)
        fig.update_xaxes(title_text="training step" if x == "step" else "epoch", row=1, col=col)
    fig.update_layout(title=title, height=380, width=max(520, 430 * len(metrics)), legend_title_text=run)
    return fig


def _bars(table: pd.DataFrame, x: str, y: str, color: str | None, *, text: Callable[[float], str], title: str,
          y_title: str, log: bool = False) -> go.Figure:
    fig = px.bar(table, x=x, y=y, color=color, barmode="group", log_y=log, title=title,
                 text=[text(v) for v in table[y]], category_orders={x: list(dict.fromkeys(table[x]))})
    fig.update_traces(textposition="outside", cliponaxis=False)
    fig.update_layout(yaxis_title=y_title, height=420, width=max(520, 120 * table[x].nunique() + 200))
    return fig


def percent_bars(results: pd.DataFrame, *, x: str = "task", color: str | None = "label", y: str = "accuracy",
                 title: str = "Test accuracy", y_title: str | None = None) -> go.Figure:
    """Grouped bars of a fraction column of result rows (accuracy, sparsity), shown in %."""
    table = results.assign(**{y: results[y] * 100})
    if color is not None:
        table[color] = table[color].astype(str)
    return _bars(table, x, y, color, text=lambda v: f"{v:.1f}", title=title, y_title=y_title or f"{y} (%)")


def storage_bars(results: pd.DataFrame, *, x: str = "task", color: str | None = "label", y: str = "storage_bytes",
                 title: str = "Storage per task (log scale)") -> go.Figure:
    """Grouped bars of a byte count on a log axis, labelled in KiB/MiB."""
    return _bars(results, x, y, color, text=human_bytes, title=title, y_title="bytes (log scale)", log=True)


def sparsity_heatmap(table: pd.DataFrame, *, title: str = "Mask sparsity per layer and task") -> go.Figure:
    """Layer (rows, input to output) x task (columns) heatmap of the fraction of zeros in each mask.

    `table`: `piggylab.analysis.sparsity_by_task` (columns layer, depth, task, sparsity).
    """
    grid = table.pivot_table(index=["depth", "layer"], columns="task", values="sparsity", sort=False)
    grid = grid.sort_index(level="depth")[list(dict.fromkeys(table["task"]))] * 100
    layers = [layer for _, layer in grid.index]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=layers, colorscale="Viridis",
                               colorbar=dict(title="zeros (%)"),
                               hovertemplate="task %{x}<br>layer %{y}<br>%{z:.2f}% zeros<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="layer (input at the top)")
    fig.update_layout(title=title, height=max(400, 18 * len(layers) + 150), width=max(500, 110 * grid.shape[1] + 300))
    return fig


def sparsity_by_depth(table: pd.DataFrame, *, color: str = "task",
                      title: str = "Mask sparsity by depth") -> go.Figure:
    """Sparsity (%) of each masked layer against its depth, one line per `color` value."""
    plot = table.assign(sparsity=table["sparsity"] * 100)
    fig = px.line(plot, x="depth", y="sparsity", color=color, markers=True, hover_data=["layer", "weights"],
                  title=title)
    fig.update_layout(xaxis_title="depth (masked layer, input to output)", yaxis_title="zeros (%)", height=420,
                      width=760)
    return fig


def accuracy_matrix(table: pd.DataFrame, *, title: str = "Accuracy of every task after each task is added") -> go.Figure:
    """Heatmap of a (task added so far) x (task evaluated) accuracy table.

    `table` columns: after (the task just added), task (the task evaluated), accuracy. A
    Piggyback network's columns are constant: adding a task never changes an earlier one.
    """
    grid = table.pivot_table(index="after", columns="task", values="accuracy", sort=False) * 100
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=[f"after {a}" for a in grid.index],
                               colorscale="Blues", colorbar=dict(title="accuracy (%)"),
                               text=[[("" if pd.isna(v) else f"{v:.1f}") for v in r] for r in grid.to_numpy()],
                               texttemplate="%{text}", hovertemplate="%{y}<br>task %{x}: %{z:.2f}%<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, xaxis_title="task evaluated", height=120 + 45 * grid.shape[0],
                      width=max(500, 110 * grid.shape[1] + 250))
    return fig


def gallery(tasks: Sequence[str] | None = None, per_task: int = 8, seed: int = 0) -> go.Figure:
    """Sample test images of the embedded tasks: one row of `per_task` images per task, each
    row titled with the task and the paper dataset it mirrors, each image with its class.

    `tasks` defaults to the source task and the five target tasks; the paper's datasets are not
    drawn (they are on disk, not generated).
    """
    tasks = list(tasks) if tasks is not None else [EMBEDDED_SOURCE, *EMBEDDED_TASKS]
    for task in tasks:
        if task in PAPER_DATASETS and task not in (EMBEDDED_SOURCE, *EMBEDDED_TASKS):
            raise ValueError(f"gallery shows embedded tasks only; {task!r} is a paper dataset")
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    rows = []
    for task in tasks:
        data = embedded_task(task, seed=seed, sizes={"train": 0, "val": 0, "test": per_task})
        x, y = data.test.tensors()
        img = (data.test.denormalise(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        rows.append((data, img, y.tolist()))
    titles = [data.classes[c] for data, _, ys in rows for c in ys]
    fig = make_subplots(rows=len(rows), cols=per_task, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.3 / max(1, len(rows)),
                        row_titles=[f"{d.name} ({d.mirrors})" for d, _, _ in rows])
    for r, (data, img, ys) in enumerate(rows, start=1):
        for c in range(per_task):
            label = f"{data.name}: {data.classes[ys[c]]}"
            fig.add_trace(go.Image(z=img[c], name=label, hovertemplate=f"{label}<extra></extra>"), row=r, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(title="Embedded tasks (row: task (paper dataset it mirrors); image: class)",
                      height=110 * len(rows) + 80, width=max(500, 90 * per_task + 160),
                      margin=dict(l=10, r=110, t=60, b=10))
    return fig


def overlap_heatmap(overlap: Any, *, layer: str = "overall",
                    title: str = "Switched-off weights shared by two tasks (Jaccard index)") -> go.Figure:
    """Task x task heatmap of the Jaccard index of the tasks' switched-off weights, with the
    value expected by chance in the hover text.

    `overlap`: `piggylab.analysis.mask_overlap`'s result; `layer`: one masked layer, or
    ``"overall"`` (every masked weight). The diagonal is 1 (blank for a task with no zeros there).
    """
    grid, chance = overlap.matrix(layer), overlap.matrix(layer, "chance")
    text = [[("" if pd.isna(v) else f"{v:.2f}") for v in row] for row in grid.to_numpy()]
    hover = [[f"{a} / {b}<br>Jaccard {'-' if pd.isna(v) else f'{v:.3f}'}<br>by chance "
              f"{'-' if pd.isna(c) or a == b else f'{c:.3f}'}" for b, v, c in zip(grid.columns, row, crow)]
             for a, row, crow in zip(grid.index, grid.to_numpy(), chance.to_numpy())]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), zmin=0, zmax=1,
                               colorscale="Blues", colorbar=dict(title="Jaccard"), text=text, texttemplate="%{text}",
                               customdata=hover, hovertemplate="%{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title if layer == "overall" else f"{title}: {layer}", height=150 + 45 * len(grid),
                      width=max(480, 90 * len(grid) + 260))
    return fig


class LiveCurve:
    """Training curves that redraw while tasks train.

    >>> live = LiveCurve()
    >>> live.show()                        # in Jupyter: an output that redraws in place
    >>> trainer.add_callback("on_step_end", live.callbacks("piggyback")["on_step_end"])
    >>> live.figure()                      # the finished, static figure (also outside Jupyter)

    `callbacks(run)` gives the `Trainer` callbacks ("on_step_end", "on_epoch_end") that record
    one run; the figure shows the loss of every step and the per-epoch `metrics` at the step
    each epoch ended. Redraws are
    at most one per `every_s` seconds during an epoch and always at an epoch's end. Outside an
    IPython kernel `show` does nothing and the callbacks only record.
    """

    def __init__(self, metrics: Sequence[str] = ("loss", "val_acc"), *, title: str = "Training curves",
                 every_s: float = 1.0) -> None:
        self.metrics = tuple(metrics)
        self.title = title
        self.every_s = every_s
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self._handle: Any = None
        self._last = 0.0

    def callbacks(self, run: str) -> dict[str, Callable[[Any, dict], None]]:
        """The `Trainer` callbacks recording the run called `run`: ``{event: fn(trainer, record)}``."""

        def on_step_end(trainer: Any, record: dict) -> None:
            self.steps.append({"run": run, "step": record["step"], "loss": record["loss"]})
            if time.monotonic() - self._last >= self.every_s:
                self.refresh()

        def on_epoch_end(trainer: Any, record: dict) -> None:
            self.epochs.append({"run": run, **record})
            self.refresh()

        return {"on_step_end": on_step_end, "on_epoch_end": on_epoch_end}

    def add_history(self, run: str, history: pd.DataFrame) -> None:
        """Draw a run that was not trained here (read from the run cache) from its history:
        its per-epoch points, the loss as each epoch's mean."""
        self.epochs += [{"run": run, **record} for record in history.to_dict("records")]
        self.steps += [{"run": run, "step": r["step"], "loss": r["loss"]} for r in history.to_dict("records")]
        self.refresh()

    def figure(self) -> go.Figure:
        """The curves recorded so far, against the training step."""
        return training_curves(pd.DataFrame(self.epochs, columns=["run", "step", *self.metrics]), self.metrics, x="step",
                               steps=pd.DataFrame(self.steps, columns=["run", "step", "loss"]), title=self.title)

    def show(self) -> None:
        """Display the figure as one output that later calls redraw (in an IPython kernel)."""
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            self._handle = display(self.figure()._repr_mimebundle_(), raw=True, display_id=True)

    def refresh(self) -> None:
        """Redraw the shown figure (nothing to do if it is not shown)."""
        self._last = time.monotonic()
        if self._handle is not None:
            self._handle.update(self.figure()._repr_mimebundle_(), raw=True)
