"""The explorer (`piggylab.widgets`) driven headlessly, and notebook 07 under papermill.

The widgets are used the way a user would: set their values, press Train (`Button.click()`),
then read the status line, the figures' data and the runs table.
"""

import json
import math
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import papermill
import pytest
import torch

import piggylab as pl
from piggylab.widgets import CSS_CLASSES, RUN_COLUMNS, Explorer, RunSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def explorer() -> Explorer:
    """An explorer over a very small backbone and 2% of the data: a run takes about a second."""
    torch.manual_seed(0)
    backbone = pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1)
    return Explorer(backbone, tasks=("greek", "sketch"), scale=0.02, batch_size=32, device="cpu", refresh_s=0.0)


def click(explorer: Explorer, **settings) -> None:
    explorer.set(**settings)
    explorer.button.click()


def walk(widget: widgets.Widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def test_a_click_trains_a_run_and_shows_it(explorer):
    click(explorer, task="greek", mask_kind="ternary", epochs=2, bn_mode="task")

    assert explorer.error is None, explorer.error
    assert explorer.status.value.count("done:") == 1
    assert not explorer.button.disabled
    runs = explorer.runs
    assert list(runs.columns) == RUN_COLUMNS and len(runs) == 1
    run = runs.iloc[0]
    assert (run["task"], run["method"], run["mask_kind"], run["epochs"], run["bn_mode"]) == (
        "greek", "piggyback", "ternary", 2, "task")
    assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["sparsity"] <= 1.0
    loss, accuracy = explorer.curve.data
    steps = 2 * math.ceil(60 / 32)  # 2% of greek's 3000 training images, batches of 32
    assert list(loss.x) == list(range(1, steps + 1)) and len(loss.y) == steps
    assert list(accuracy.x) == [1, 2] and all(0 <= a <= 1 for a in accuracy.y)
    assert "#1 greek (piggyback, ternary mask)" == loss.name
    bars = explorer.sparsity_figure.data[0]
    assert len(bars.x) == len(explorer.net.masked_layers) == len(explorer.layers[1])
    assert "run #1" in explorer.sparsity_figure.layout.title.text
    assert "ternary" in explorer.runs_table.value
    assert explorer.net.task("greek-1").task_bn


def test_a_second_click_with_other_settings_adds_a_row(explorer):
    click(explorer, task="greek", epochs=1)
    click(explorer, task="sketch", method="classifier", epochs=1, bn_mode="frozen")

    runs = explorer.runs
    assert list(runs["run"]) == [1, 2] and list(runs["task"]) == ["greek", "sketch"]
    second = runs.iloc[1]
    assert second["method"] == "classifier" and pd.isna(second["mask_kind"]) and pd.isna(second["threshold"])
    assert second["sparsity"] == 0.0  # the classifier-only baseline keeps the mask all ones
    assert len(explorer.curve.data) == 4 and explorer.curve.data[2].name == "#2 sketch (classifier)"
    assert "run #2" in explorer.sparsity_figure.layout.title.text
    assert explorer.runs_table.value.count("</tr>") == 3  # header and two runs
    assert set(explorer.net.tasks) == {"greek-1", "sketch-2"}


def test_finetune_runs_on_a_copy(explorer):
    click(explorer, method="finetune", epochs=1)

    run = explorer.runs.iloc[0]
    assert run["method"] == "finetune" and pd.isna(run["bn_mode"]) and 0 <= run["accuracy"] <= 1
    assert explorer.controls["bn_mode"].disabled and explorer.controls["mask_kind"].disabled


def test_the_curve_and_status_update_while_training_and_the_button_is_disabled(explorer):
    seen = []  # (status, button disabled, points of the loss curve) at every status update

    def record(change: dict) -> None:
        loss_points = len(explorer.curve.data[-2].x) if explorer.curve.data else 0
        seen.append((change["new"], explorer.button.disabled, loss_points))

    explorer.status.observe(record, "value")
    click(explorer, epochs=3)

    training = [(disabled, points) for status, disabled, points in seen if "training greek" in status]
    assert training and all(disabled for disabled, _ in training)
    assert [points for _, points in training][-1] > [points for _, points in training][0] == 0
    assert any("epoch 3/3" in status for status, _, _ in seen)
    assert "done:" in seen[-1][0] and not explorer.button.disabled


def test_a_bad_value_shows_in_the_status_line(explorer):
    click(explorer, threshold=-1.0, epochs=1)

    assert "error" in explorer.status.value and "threshold" in explorer.status.value
    assert explorer.error.startswith("ValueError") and "threshold" in explorer.error
    assert explorer.runs.empty and not explorer.net.tasks and not explorer.button.disabled
    with pytest.raises(ValueError, match="threshold"):
        explorer.train(raise_errors=True)


def test_an_error_inside_training_shows_and_leaves_nothing_behind(explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr("piggylab.widgets.evaluate", broken)
    click(explorer, epochs=1)

    assert "RuntimeError: evaluation broke" in explorer.status.value and "traceback" in explorer.status.value
    assert explorer.runs.empty and not explorer.net.tasks and not explorer.button.disabled
    assert explorer.curve.data[0].name.endswith("(failed)") and len(explorer.curve.data[0].x) > 0
    monkeypatch.undo()
    click(explorer, epochs=1)  # the next run works and gets the next number
    assert list(explorer.runs["run"]) == [2] and explorer.error is None


def test_controls_follow_the_method_and_the_init(explorer):
    controls = explorer.controls
    explorer.set(method="classifier")
    assert all(controls[n].disabled for n in ("mask_kind", "init", "scale", "threshold", "lr_scores"))
    assert not controls["bn_mode"].disabled
    explorer.set(method="piggyback", init="weight")
    assert not controls["mask_kind"].disabled and controls["scale"].value == 1.0
    explorer.set(init="uniform", scale=0.02)
    assert explorer.settings == RunSettings(task="greek", init="uniform", scale=0.02)
    with pytest.raises(KeyError, match="unknown control"):
        explorer.set(colour="red")


def test_every_part_has_its_css_class_and_description(explorer):
    classes = {c for w in walk(explorer.widget) for c in getattr(w, "_dom_classes", ())}
    assert set(CSS_CLASSES.values()) <= classes
    for name in ("task", "method", "mask_kind", "epochs", "bn_mode"):
        assert explorer.controls[name].description
    assert explorer.button.description == "Train"
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


@pytest.mark.slow
def test_notebook_07_runs_with_smoke_settings(tmp_path):
    out = tmp_path / "out"
    papermill.execute_notebook(str(ROOT / "notebooks" / "07_explorer.ipynb"), str(tmp_path / "07.ipynb"),
                               parameters={"smoke": True, "output_dir": str(out)}, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["notebook"] == "07_explorer" and metrics["parameters"]["smoke"] is True
    results = metrics["results"]
    assert [(r["task"], r["method"]) for r in results] == [("greek", "classifier"), ("greek", "piggyback")]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["sparsity"] <= 1 for r in results)
    for name in ("runs.csv", "layer_sparsity.csv", "training_curves.html", "latest_run_sparsity.html"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_notebook_07_rejects_a_bad_parameter(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="'methods'"):
        papermill.execute_notebook(str(ROOT / "notebooks" / "07_explorer.ipynb"), str(tmp_path / "07.ipynb"),
                                   parameters={"smoke": True, "methods": ["packnet"], "output_dir": str(tmp_path)},
                                   kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
