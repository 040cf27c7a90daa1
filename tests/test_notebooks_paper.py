"""The paper's path in the notebooks: 01 and 08 run under papermill over the synthetic paper
datasets (`paper_data`, JPEG files in the reference layout) with a torchvision resnet18
(random weights), the paper's recipe, smoke sizes, on the CPU; so that a researcher's first GPU
run is not that path's first run."""

import json

import pytest
from paper_data import write_paper_datasets
from test_notebooks import ROOT, _execute

import piggylab as pl
from piggylab.train import paper_recipe

PAPER = {"backbone": "resnet18", "weights": None, "recipe": "paper", "smoke": True, "device": "cpu"}
BASELINES = ["classifier", "piggyback", "piggyback + task BN", "finetune"]


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    return write_paper_datasets(tmp_path_factory.mktemp("paper"))


@pytest.fixture(scope="module")
def masked_weights() -> int:
    return pl.PiggybackNet(pl.load_backbone("resnet18", weights=None), backbone_name="resnet18").num_masked_weights


def run_notebook(name: str, output, paper_root, **parameters) -> dict:
    """Run notebook `name` on the paper's path; its metrics.json, checked for what every run leaves."""
    _execute(ROOT / "notebooks" / f"{name}.ipynb", output, data_root=str(paper_root), **PAPER, **parameters)
    metrics = json.loads((output / "metrics.json").read_text())
    assert {k: metrics["parameters"][k] for k in PAPER} == PAPER
    assert not list((output / "checkpoints").glob("*")), "a finished run left its checkpoint"
    return metrics


def check_baselines(rows: list[dict], task: str, masked_weights: int) -> None:
    """One task's four baseline rows: trained by the paper's recipe, one smoke epoch each, and
    stored as each method stores a task (a head < a mask and a head < a float32 network)."""
    mine = {row["label"]: row for row in rows if row["task"] == task and row["label"] in BASELINES}
    assert sorted(mine) == sorted(BASELINES)
    for row in mine.values():
        assert row["lr"] == paper_recipe(row["method"]).lr and (row["epochs"], row["status"]) == (1, "done")
        assert row["classes"] == 3 and row["steps"] >= 1 and 0.0 <= row["accuracy"] <= 1.0
    storage = {label: row["storage_bytes"] for label, row in mine.items()}
    assert storage["classifier"] < storage["piggyback"] < storage["finetune"]
    assert storage["finetune"] > 4 * masked_weights


@pytest.mark.slow
def test_quickstart_on_the_paper_path(paper_root, masked_weights, tmp_path):
    metrics = run_notebook("01_quickstart", tmp_path, paper_root, task="cubs")
    assert {row["task"] for row in metrics["results"]} == {"cubs"}
    check_baselines(metrics["results"], "cubs", masked_weights)
    assert (tmp_path / "results.csv").exists() and (tmp_path / "sparsity_by_depth.html").exists()


@pytest.mark.slow
def test_baselines_on_the_paper_path(paper_root, masked_weights, tmp_path):
    metrics = run_notebook("08_baselines", tmp_path, paper_root, tasks=["cubs", "cars"], packnet_tasks=["cubs", "cars"],
                           init_tasks=["cubs"], early_epochs=0)
    rows = metrics["results"]
    for task in ("cubs", "cars"):
        check_baselines(rows, task, masked_weights)
        packnet = sorted(row["label"] for row in rows if row["task"] == task and row["method"] == "packnet")
        assert packnet == ["packnet (forward order)", "packnet (reversed order)"]
    [last] = [row for row in rows if row.get("order") == "trained last"]
    assert (last["task"], last["order_check"]) == ("cubs", "identical")  # the backbone never changes
    variants = [row["backbone_variant"] for row in rows if row.get("experiment") == "backbone_init"]
    assert variants == ["pretrained", "random"]  # no tiny backbone's early checkpoint over resnet18
    assert (tmp_path / "comparison.csv").exists() and (tmp_path / "backbone_init.csv").exists()
