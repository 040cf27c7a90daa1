"""The explorer's figures (`piggylab.widgets`): how its curve, sweep heatmaps, per-layer sparsity
bars, mask heatmap, sparsity growth and runs table look, and how a new result is drawn in them.

Each figure starts empty (the ``*_layout`` functions) and is drawn into by the functions below,
from the explorer's tables (`piggylab.analysis.layer_sparsity` rows, growth records, run rows)
and masks. Sparsity axes start at 0 and accuracy axes run from 0 to 100%, whatever the values.
`display_data` turns a figure into the output that JupyterLab's plotly renderer draws.

This module draws only: it holds no widget, trains nothing and knows nothing of threads; plots
of the notebooks' result tables are `piggylab.plots`'.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = ["MASK_COLOURS", "MAX_GROWTH_LINES", "MAX_MASK_CELLS", "SHOWN_COLUMNS", "add_run_traces", "axis_top",
           "curve_layout", "display_data", "draw_growth", "draw_mask", "draw_sparsity", "fill_sweep_cell",
           "growth_layout", "growth_lines", "mask_layout", "runs_html", "sparsity_layout", "start_sweep",
           "store_view_state", "sweep_layout"]

MASK_COLOURS = [[0.0, "#d62728"], [1 / 3, "#d62728"], [1 / 3, "#111111"], [2 / 3, "#111111"], [2 / 3, "#e8e8e8"],
                [1.0, "#e8e8e8"]]
"""A mask's entries: -1 red (ternary), 0 (off) black, 1 (on) light grey."""

MAX_MASK_CELLS = 150_000
"""At most this many mask entries are drawn (the first filters of a larger layer)."""

MAX_GROWTH_LINES = 12
"""The growth chart draws a line per layer up to this many layers, else per group of layers."""

SHOWN_COLUMNS = ["run", "sweep", "status", "task", "method", "mask_kind", "init", "init_scale", "threshold", "lr",
                 "lr_scores", "epochs", "bn_mode", "steps", "val_accuracy", "accuracy", "sparsity", "train_s", "error"]
"""The runs table's columns on screen."""


def display_data(figure: go.Figure) -> dict[str, Any]:
    """`figure` as an output that JupyterLab's plotly renderer draws: its JSON (numpy arrays as bytes)."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": json.loads(pio.to_json(figure, validate=False)),
                     "text/plain": f"<plotly figure: {figure.layout.title.text}>"}}


def store_view_state(figure: go.FigureWidget) -> None:
    """Store the figure as it is now in the widget state that new views of it start from.

    plotly's FigureWidget sends edits (new traces, new points, a new title) as one-off messages
    that update the views on screen, but its synced state (``_widget_data``, ``_widget_layout``)
    is refreshed only when the figure itself is displayed. A view made later (the browser tab
    reloaded, the notebook closed and reopened, the figure shown inside a box) would start from
    that stale state: an empty training curve. Its own `_repr_mimebundle_` does the refresh.
    """
    figure._repr_mimebundle_()


def axis_top(value: float) -> float:
    """The top of a sparsity axis that starts at 0: a little above `value`, at least 1%."""
    return max(0.01, 1.1 * value)


# -- the live curve -------------------------------------------------------------------------

def curve_layout() -> go.Figure:
    """Training loss per step (left) and validation accuracy per epoch, 0 to 100% (right)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Validation accuracy"),
                           column_widths=[0.6, 0.4], horizontal_spacing=0.1)
    figure.update_xaxes(title_text="step", row=1, col=1)
    figure.update_xaxes(title_text="epoch", dtick=1, rangemode="tozero", row=1, col=2)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    figure.update_layout(height=340, margin={"t": 40, "b": 40, "l": 50, "r": 10}, template="plotly_white",
                         legend={"orientation": "h", "y": -0.25})
    return figure


def add_run_traces(curve: go.FigureWidget, number: int, name: str) -> tuple[Any, Any]:
    """Two empty traces for run `number` on the curve, in its own colour: (loss, validation accuracy)."""
    colour = qualitative.Plotly[(number - 1) % len(qualitative.Plotly)]
    common = {"name": name, "legendgroup": str(number), "line": {"color": colour}, "mode": "lines+markers"}
    curve.add_scatter(x=[], y=[], marker={"size": 4}, row=1, col=1, **common)
    curve.add_scatter(x=[], y=[], marker={"size": 8}, showlegend=False, row=1, col=2, **common)
    return curve.data[-2], curve.data[-1]


# -- the sweep ------------------------------------------------------------------------------

def sweep_layout() -> go.Figure:
    """Two heatmaps over the sweep's grid: validation accuracy (0 to 100%) and mask sparsity (from 0)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Validation accuracy", "Mask sparsity"),
                           horizontal_spacing=0.16)
    for col, (name, zmax, colours, bar_x, ticks) in enumerate((("val accuracy", 1.0, "Blues", 0.42, ".0%"),
                                                               ("sparsity", 0.01, "Oranges", 1.0, ".1%")), start=1):
        figure.add_heatmap(x=[], y=[], z=[], text=[], texttemplate="%{text}", zmin=0, zmax=zmax, colorscale=colours,
                           name=name, colorbar={"x": bar_x, "tickformat": ticks, "thickness": 12},
                           hovertemplate=f"x %{{x}}, y %{{y}}<br>{name} %{{z:.2%}}<extra></extra>", row=1, col=col)
    figure.update_xaxes(type="category")
    figure.update_yaxes(type="category")
    figure.update_layout(title_text="Sweep: choose up to two knobs and their values, then press Sweep", height=320,
                         template="plotly_white", margin={"t": 60, "b": 40, "l": 60, "r": 10})
    return figure


def start_sweep(figure: go.Figure, title: str, x: tuple[str, Sequence[str]], y: tuple[str, Sequence[str]]) -> None:
    """Empty both heatmaps over a new grid: `x` and `y` are (knob, its values as labels)."""
    (x_name, x_labels), (y_name, y_labels) = x, y
    for trace in figure.data:
        trace.x, trace.y = list(x_labels), list(y_labels)
        trace.z = [[None] * len(x_labels) for _ in y_labels]
        trace.text = [[""] * len(x_labels) for _ in y_labels]
    figure.data[1].zmax = axis_top(0.0)
    figure.update_xaxes(title_text=x_name)
    figure.update_yaxes(title_text=y_name)
    figure.layout.title.text = title


def fill_sweep_cell(figure: go.Figure, i: int, j: int, values: tuple[float, float] | None, note: str) -> None:
    """Fill cell (`i`, `j`) with (validation accuracy, sparsity), or leave it empty with `note`
    written in it (a stopped or failed run); the sparsity scale follows its largest value."""
    for k, trace in enumerate(figure.data):
        z, text = [list(r) for r in trace.z], [list(r) for r in trace.text]
        z[j][i] = None if values is None else values[k]
        text[j][i] = note if values is None else f"{values[k]:.1%}"
        trace.z, trace.text = z, text
    sparsity = figure.data[1]
    sparsity.zmax = axis_top(max([0.0, *(v for r in sparsity.z for v in r if v is not None)]))


# -- sparsity per layer ---------------------------------------------------------------------

def sparsity_layout() -> go.Figure:
    """Bars of each masked layer's sparsity, by depth, on an axis from 0."""
    bars = go.Bar(x=[], y=[], name="sparsity", hovertemplate=("depth %{x}: %{customdata[0]} (%{customdata[1]}, "
                                                               "%{customdata[2]} weights)<br>%{y:.2%} zeros"
                                                               "<extra></extra>"))
    figure = go.Figure(bars)
    figure.update_layout(title_text="Mask sparsity per layer: train a task to see its mask", height=300,
                         xaxis_title="depth (masked layer, input to output)", yaxis_title="zeros in the mask",
                         yaxis={"tickformat": ".1%", "range": [0, axis_top(0.0)]}, template="plotly_white",
                         margin={"t": 40, "b": 40, "l": 60, "r": 10})
    return figure


def draw_sparsity(figure: go.Figure, layers: pd.DataFrame, title: str) -> None:
    """Draw a run's `layer_sparsity` table as the bars."""
    bars = figure.data[0]
    bars.x, bars.y = list(layers["depth"]), list(layers["sparsity"])
    bars.customdata = list(zip(layers["layer"], layers["kind"], layers["weights"]))
    figure.layout.yaxis.range = [0, axis_top(float(layers["sparsity"].max()) if len(layers) else 0.0)]
    figure.layout.title.text = title


# -- the mask -------------------------------------------------------------------------------

def mask_layout() -> go.Figure:
    """A heatmap of one layer's mask: filters as rows, each filter's weights along a row."""
    figure = go.Figure(go.Heatmap(z=[], zmin=-1, zmax=1, colorscale=MASK_COLOURS, showscale=False,
                                  hovertemplate="filter %{y}, column %{x}: %{z}<extra></extra>"))
    figure.update_yaxes(autorange="reversed", title_text="filter (output channel)")
    figure.update_xaxes(title_text="input channel × kernel position")
    figure.update_layout(title_text="The mask: train a piggyback task to see which weights are off", height=360,
                         template="plotly_white", margin={"t": 50, "b": 40, "l": 60, "r": 10})
    return figure


def draw_mask(figure: go.Figure, mask: torch.Tensor | None, layer: str, number: int) -> None:
    """Draw run `number`'s `mask` of `layer` (None: not in memory) as rows (filters, or a linear
    layer's outputs) of its flattened inputs: at most `MAX_MASK_CELLS` entries, sent as int8
    bytes, with a title saying what share is off."""
    heatmap = figure.data[0]
    if mask is None:
        heatmap.z = []
        figure.layout.title.text = (f"Mask of run #{number}: not in memory (trained before this explorer was "
                                    "created); its growth is below")
        return
    grid = mask.reshape(mask.shape[0], -1).cpu().to(torch.int8)
    rows, columns = grid.shape
    off = float((grid == 0).sum()) / grid.numel()
    shown_rows = max(1, min(rows, MAX_MASK_CELLS // columns))
    shown_columns = min(columns, MAX_MASK_CELLS)
    part = "" if (shown_rows, shown_columns) == (rows, columns) else (
        f" (the first {shown_rows} of {rows} filters{'' if shown_columns == columns else f', {shown_columns} columns'})")
    heatmap.z = grid[:shown_rows, :shown_columns].numpy()
    figure.layout.title.text = (f"Mask of {layer}, run #{number}: {off:.2%} of its {grid.numel():,} weights off "
                                f"(black){part}; rows: filters")


# -- sparsity epoch by epoch ----------------------------------------------------------------

def growth_layout() -> go.Figure:
    """Lines of sparsity against the epoch, on an axis from 0."""
    figure = go.Figure()
    figure.update_layout(title_text="Sparsity epoch by epoch: train a piggyback task to see it grow", height=320,
                         xaxis={"title": "epoch", "rangemode": "tozero"},
                         yaxis={"title": "zeros in the mask", "tickformat": ".1%", "range": [0, axis_top(0.0)]},
                         template="plotly_white", margin={"t": 50, "b": 40, "l": 60, "r": 10})
    return figure


def growth_lines(growth: pd.DataFrame) -> pd.DataFrame:
    """(line, layers, epoch, zeros, weights, sparsity): a line per layer, or per group of
    consecutive layers when there are more than `MAX_GROWTH_LINES` (its zeros over its weights)."""
    layers = list(dict.fromkeys(growth.sort_values("depth")["layer"]))
    group_of = {}
    for members in np.array_split(np.arange(len(layers)), min(len(layers), MAX_GROWTH_LINES)):
        names = [layers[i] for i in members]
        line = names[0] if len(names) == 1 else f"layers {members[0]}–{members[-1]}"
        group_of.update(dict.fromkeys(names, (line, ", ".join(names))))
    table = growth.assign(line=[group_of[layer][0] for layer in growth["layer"]],
                          layers=[group_of[layer][1] for layer in growth["layer"]])
    lines = table.groupby(["line", "layers", "epoch"], sort=False)[["zeros", "weights"]].sum().reset_index()
    return lines.assign(sparsity=lines["zeros"] / lines["weights"])


def draw_growth(figure: go.Figure, growth: pd.DataFrame, number: int, layer: str) -> None:
    """Run `number`'s growth records as one line per layer (or group) against the epoch; `layer`'s bold."""
    figure.data = []
    if growth.empty:
        figure.layout.yaxis.range = [0, axis_top(0.0)]
        figure.layout.title.text = f"Sparsity epoch by epoch: run #{number} has no piggyback mask"
        return
    lines = growth_lines(growth)
    for i, (line, part) in enumerate(lines.groupby("line", sort=False)):
        chosen = layer in part["layers"].iloc[0].split(", ")
        figure.add_scatter(x=list(part["epoch"]), y=list(part["sparsity"]), name=line, mode="lines+markers",
                           line={"width": 4 if chosen else 1.5, "color": qualitative.Plotly[i % len(qualitative.Plotly)]},
                           hovertemplate=f"{line}<br>epoch %{{x:.2f}}: %{{y:.2%}} zeros<extra></extra>")
    figure.layout.yaxis.range = [0, axis_top(float(lines["sparsity"].max()))]
    each = "layer" if lines["line"].nunique() == growth["layer"].nunique() else "group of layers"
    figure.layout.title.text = f"Sparsity epoch by epoch, run #{number}: a line per {each} ({layer} in bold)"


# -- the runs table -------------------------------------------------------------------------

def runs_html(runs: pd.DataFrame) -> str:
    """The runs table (`SHOWN_COLUMNS`) as HTML, fractions in %, empty settings as "–"."""
    if runs.empty:
        return "<i>no runs yet</i>"

    def number(spec: str):
        return lambda value: "–" if pd.isna(value) else format(value, spec)

    def text(value: Any) -> str:
        return "–" if value is None or pd.isna(value) else html.escape(str(value)[:80])

    formats = {"accuracy": ".1%", "val_accuracy": ".1%", "sparsity": ".2%", "train_s": ".1f", "lr": ".0e",
               "lr_scores": ".0e", "threshold": "g", "init_scale": "g"}
    shown = runs[SHOWN_COLUMNS].astype({"sweep": "Int64", "steps": "Int64", "epochs": "Int64"})
    table = shown.to_html(index=False, na_rep="–", border=0, escape=False,
                          formatters={**{c: text for c in SHOWN_COLUMNS}, **{k: number(v) for k, v in formats.items()}})
    return f"<style>.piggylab-runs td, .piggylab-runs th {{padding: 1px 8px; text-align: right}}</style>{table}"
