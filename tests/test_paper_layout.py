"""The paper's path without the paper's data: the synthetic datasets of `paper_data` in the
reference layout, read by `load_data`, trained on by a torchvision backbone, and the paper grid
listed over them."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from paper_data import class_folder, write_paper_datasets

import piggylab as pl
from piggylab.cli import main
from piggylab.datasets import PAPER_DATASETS, load_data, make_loaders

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory) -> Path:
    return write_paper_datasets(tmp_path_factory.mktemp("paper"))


def test_the_helper_writes_jpeg_files_in_the_reference_layout(paper_root):
    for dataset in PAPER_DATASETS:
        for split, count in (("train", 10), ("test", 3)):
            folders = sorted((paper_root / dataset / split).iterdir())
            assert [f.name for f in folders] == [class_folder(dataset, i) for i in range(3)]
            assert all(len(list(f.glob("*.jpg"))) == count for f in folders)
            assert (folders[0] / f"{split}_0000.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_load_data_reads_each_paper_dataset(paper_root, dataset):
    with pytest.warns(UserWarning, match=f"{dataset}: found 3 classes, the paper's dataset has"):
        data = load_data(dataset, root=paper_root)
    assert data.num_classes == 3 and data.classes == [class_folder(dataset, i) for i in range(3)]
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 9)  # a tenth of train for validation
    image, label = data.test[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 0  # greyscale made RGB
    images, labels = next(iter(make_loaders(data, batch_size=4)[0]))
    assert images.shape == (4, 3, 224, 224) and labels.dtype == torch.int64


def test_a_torchvision_backbone_trains_on_a_paper_dataset(paper_root):
    with pytest.warns(UserWarning, match="found 3 classes"):
        data = load_data("flowers", root=paper_root)
    train, val, test = make_loaders(data, batch_size=16)
    net = pl.PiggybackNet(pl.load_backbone("resnet18", weights=None), backbone_name="resnet18")
    net.add_task("flowers", data.num_classes, seed=0)
    history = pl.train(net, "flowers", train, val, epochs=1, device="cpu", progress=False)
    assert history["step"].tolist() == [2] and net.is_frozen("flowers")
    assert 0 <= pl.evaluate(net, test, task="flowers", device="cpu") <= 1


def test_the_paper_grid_lists_its_runs_over_that_folder(paper_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the grid's notebooks_dir is relative
    grid = yaml.safe_load((REPO / "grids" / "paper.yaml").read_text())
    expected = sum(math.prod(len(v) for v in run.get("grid", {}).values()) for run in grid["runs"])
    arguments = ["batch", "grids/paper.yaml", "--dry-run", "--set", f"data_root={paper_root}",
                 "--output", str(tmp_path / "out")]
    assert main(arguments) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"{expected} runs, 0 done; output: {tmp_path / 'out'}"
    assert len(lines) == expected + 1 and all(f"data_root={paper_root}" in line for line in lines[:-1])
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
