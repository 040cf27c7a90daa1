"""Ablations: PackNet runs, task order, backbone initialisation."""

import json
from pathlib import Path

import pytest
import torch

import piggylab as pl
from piggylab.ablations import (BackboneVariant, backbone_init_ablation, default_orders, init_variants, order_spread,
                                packnet_orders, randomised, run_packnet)
from piggylab.datasets import embedded_task
from piggylab.experiments import RunSpec
from piggylab.packnet import PackNetConfig
from piggylab.pretrain import record_path, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"train": 48, "val": 16, "test": 24}


@pytest.fixture(scope="module")
def tasks():
    return [embedded_task(name, sizes=SIZES) for name in ("greek", "sketch")]


def test_run_packnet_rows(backbone, tasks):
    rows, histories = run_packnet(backbone, tasks, PackNetConfig(epochs=1, retrain_epochs=1, device="cpu"),
                                  seeds={"greek": 3}, batch_size=16)
    assert rows["task"].tolist() == ["greek", "sketch"] and rows["position"].tolist() == [1, 2]
    assert set(rows["method"]) == {"packnet"}
    assert rows["sparsity"].tolist() == pytest.approx([0.5, 0.25], abs=1e-3)  # task 2 sees 1/2 + 1/4 of the weights
    assert rows["owned_fraction"].tolist() == pytest.approx([0.5, 0.25], abs=1e-3)
    assert rows["accuracy"].between(0, 1).all() and (rows["storage_bytes"] > 0).all()
    assert histories.groupby("task")["phase"].apply(list).to_dict() == {"greek": ["train", "retrain"],
                                                                       "sketch": ["train", "retrain"]}


def test_packnet_depends_on_task_order(backbone, tasks):
    rows, histories = packnet_orders(backbone, tasks, PackNetConfig(epochs=1, retrain_epochs=0, lr=1e-2, device="cpu"),
                                     batch_size=16)
    assert len(rows) == 4 and set(rows["order"]) == {"forward", "reversed"}
    assert set(rows["label"]) == {"packnet (forward order)", "packnet (reversed order)"}
    assert set(histories["order"]) == {"forward", "reversed"}
    packnet = rows.set_index(["task", "order"])
    assert packnet.loc[("greek", "forward"), "position"] == 1 and packnet.loc[("greek", "reversed"), "position"] == 2
    assert packnet.loc[("greek", "forward"), "owned_fraction"] != packnet.loc[("greek", "reversed"), "owned_fraction"]
    assert set(order_spread(rows)["method"]) == {"packnet"}
    with pytest.raises(ValueError, match="must list each of"):
        packnet_orders(backbone, tasks, PackNetConfig(), orders={"bad": ["greek"]})
    assert default_orders(tasks) == {"forward": ["greek", "sketch"], "reversed": ["sketch", "greek"]}


def test_backbone_init_ablation(backbone, tasks):
    random = randomised(backbone, seed=1)
    assert type(random) is type(backbone)
    assert not torch.equal(random.conv1.weight, backbone.conv1.weight)
    assert torch.equal(randomised(backbone, seed=1).conv1.weight, random.conv1.weight)
    variants = [BackboneVariant("pretrained", backbone, "fixture"), BackboneVariant("random", random, "reset")]
    rows = backbone_init_ablation(variants, tasks[:1], RunSpec(pl.TrainConfig("piggyback", epochs=1, device="cpu")),
                                  batch_size=16)
    assert rows["backbone_variant"].tolist() == ["pretrained", "random"] and set(rows["method"]) == {"piggyback"}
    assert rows["label"].tolist() == ["piggyback (pretrained backbone)", "piggyback (random backbone)"]
    assert set(rows["experiment"]) == {"backbone_init"}
    assert {"accuracy", "sparsity", "storage_bytes", "source_accuracy"} <= set(rows.columns)


def test_init_variants_pretrain_or_read_an_early_checkpoint(backbone, tmp_path):
    variants = init_variants(backbone, source_accuracy=0.9, early_checkpoint=None, early_epochs=1, early_scale=0.002,
                             device="cpu")
    assert [v.name for v in variants] == ["pretrained", "random", "early"]
    assert variants[0].model is backbone and variants[0].source_accuracy == 0.9
    assert 0 <= variants[2].source_accuracy <= 1
    shapes = {k: v.shape for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    for variant in variants[1:]:
        assert {k: v.shape for k, v in variant.model.state_dict().items() if not k.startswith("fc.")} == shapes
    assert [v.name for v in init_variants(backbone, early_checkpoint=None, early_epochs=0)] == ["pretrained", "random"]
    path = tmp_path / "early.safetensors"
    save_checkpoint(variants[2].model, path, seed=0, recipe={})
    record_path(path).write_text(json.dumps({"val_accuracy": 0.25}))
    early = init_variants(backbone, early_checkpoint=path)[2]
    assert early.source_accuracy == 0.25 and torch.equal(early.model.conv1.weight, variants[2].model.conv1.weight)
    with pytest.raises(ValueError, match="tiny backbone only"):
        init_variants(torch.nn.Sequential(torch.nn.Linear(2, 2)), early_checkpoint=None, early_epochs=1)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))  # another architecture: never the tiny's early checkpoint
    assert [v.name for v in init_variants(other, early_checkpoint=path, early_epochs=0)] == ["pretrained", "random"]
