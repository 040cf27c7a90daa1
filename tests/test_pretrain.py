"""The committed tiny backbone and the code that pretrains it (fast: a few seconds on CPU)."""

import json
import socket

import pytest
import torch
from safetensors import safe_open

import piggylab as pl
from piggylab.backbones import TINY_CHECKPOINT, load_backbone, load_tiny_backbone
from piggylab.datasets import EMBEDDED_SOURCE, load_data
from piggylab.pretrain import pretrain_tiny_backbone, record_path, sha256_file

RECORD = record_path(TINY_CHECKPOINT)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test that must not need it")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_committed_checkpoint_loads_offline_and_matches_its_record(no_network, record):
    model = load_backbone("tiny")
    assert isinstance(model, pl.backbones.TinyResNet)
    assert sha256_file(TINY_CHECKPOINT) == record["sha256"]
    assert TINY_CHECKPOINT.stat().st_size == record["bytes"]
    assert pl.PiggybackNet(model, backbone_name="tiny").fingerprint() == record["fingerprint"]
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    assert 300_000 <= record["parameters"] <= 1_000_000
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_committed_checkpoint_records_its_recipe(record):
    with safe_open(str(TINY_CHECKPOINT), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["recipe"]) == record["recipe"]
    assert int(metadata["seed"]) == record["seed"]
    assert json.loads(metadata["widths"]) == record["recipe"]["widths"]
    assert int(metadata["num_classes"]) == record["num_classes"] == 62


def test_committed_checkpoint_classifies_the_source_task(record):
    data = load_data(EMBEDDED_SOURCE, scale=0.05)  # 200 test images
    x, y = data.test.tensors()
    model = load_tiny_backbone().eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > max(0.5, record["test_accuracy"] - 0.08)


def test_pretrain_writes_a_loadable_checkpoint_atomically(tmp_path):
    committed = (sha256_file(TINY_CHECKPOINT), RECORD.read_bytes())
    output = tmp_path / "backbone.safetensors"
    model, info = pretrain_tiny_backbone(epochs=1, lr=0.05, batch_size=64, seed=3, scale=0.01, device="cpu",
                                         output=output, progress=False, widths=(8, 16, 32), blocks=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.json", "backbone.safetensors"]  # no temp files left
    loaded = load_tiny_backbone(output)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    saved = json.loads(record_path(output).read_text())
    assert saved["sha256"] == sha256_file(output) == info["sha256"]
    assert saved["fingerprint"] == pl.PiggybackNet(loaded).fingerprint()
    assert saved["seed"] == 3 and saved["recipe"]["epochs"] == 1 and saved["recipe"]["widths"] == [8, 16, 32]
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and len(saved["history"]) == 1
    assert (sha256_file(TINY_CHECKPOINT), RECORD.read_bytes()) == committed  # data/ untouched


def test_pretrain_without_output_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, info = pretrain_tiny_backbone(epochs=1, lr=0.05, batch_size=64, scale=0.01, device="cpu", output=None,
                                     progress=False, widths=(8, 16, 32), blocks=1)
    assert list(tmp_path.iterdir()) == []
    assert "sha256" not in info and info["fingerprint"]
