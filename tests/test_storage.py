import os

import numpy as np
import pytest
import torch

import piggylab as pl
from piggylab import storage


def _trained_net(backbone, kind="binary", task_bn=False, zeros=0.05):
    torch.manual_seed(0)
    net = pl.PiggybackNet(backbone, backbone_name="tiny-test")
    net.add_task("a", 4, mask=pl.MaskConfig(kind=kind), task_bn=task_bn, class_names=list("wxyz"))
    with torch.no_grad():
        for _, masks, _ in net.masked_weights():
            s = masks.scores["a"]
            s.copy_(torch.where(torch.rand_like(s) < zeros, torch.full_like(s, -1.0), torch.full_like(s, 1.0)))
            if kind == "ternary":
                s[torch.rand_like(s) < zeros] = 1e-3  # some exact zeros besides the -1s
        for _, bn in net.batchnorms():
            if "a" in bn.per_task:
                bn.per_task["a"].running_mean.uniform_()
    net.freeze_task("a")
    return net


@pytest.mark.parametrize("fmt", storage.FORMATS)
@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_round_trip(backbone, tmp_path, fmt, kind):
    net = _trained_net(backbone, kind, task_bn=True)
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    expected = net(x)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors", fmt)
    fresh = pl.PiggybackNet(backbone, backbone_name="tiny-test")
    assert pl.load_task(fresh, path) == "a"
    fresh.set_task("a")
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    assert fresh.tasks["a"].class_names == list("wxyz") and fresh.tasks["a"].mask.kind == kind
    assert all(torch.equal(fresh.masks("a")[k], v) for k, v in net.masks("a").items())


def test_packed_binary_is_one_bit_per_weight(backbone, tmp_path):
    net = _trained_net(backbone)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors", "packed")
    n = net.num_masked_weights
    tensors, _ = storage.read_task_file(path)
    assert tensors["mask"].numel() == sum(-(-m.numel() // 8) for m in net.masks("a").values())
    assert storage.mask_bits_per_weight(path) == pytest.approx(1.0, abs=8 * len(net.masked_layers) / n)


def test_entropy_coding_beats_one_bit_for_sparse_masks():
    rng = np.random.default_rng(0)
    for zeros, bound in [(0.05, 0.30), (0.10, 0.49)]:
        mask = rng.random(200_000) > zeros
        stream, header = storage.rice_encode(mask)
        assert 8 * len(stream) / len(mask) < bound
        assert np.array_equal(storage.rice_decode(stream, header), mask)
    for mask in [np.ones(1000, bool), np.zeros(1000, bool), rng.random(1001) > 0.9]:
        assert np.array_equal(storage.rice_decode(*storage.rice_encode(mask)), mask)


def test_other_backbone_is_refused_naming_both_fingerprints(backbone, tmp_path):
    net = _trained_net(backbone)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors")
    other_backbone = pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1)
    other = pl.PiggybackNet(other_backbone)
    with pytest.raises(pl.TaskFileError) as error:
        pl.load_task(other, path)
    assert net.fingerprint() in str(error.value) and other.fingerprint() in str(error.value)
    assert other.tasks == {}


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_files_fail_clearly_and_change_nothing(backbone, tmp_path, damage):
    net = _trained_net(backbone)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF
    else:
        data = bytearray(b"not a task file at all")
    path.write_bytes(bytes(data))
    fresh = pl.PiggybackNet(backbone, backbone_name="tiny-test")
    with pytest.raises(pl.TaskFileError, match="corrupted|truncated"):
        pl.load_task(fresh, path)
    assert fresh.tasks == {} and fresh.active_task is None


def test_save_is_atomic(backbone, tmp_path, monkeypatch):
    net = _trained_net(backbone)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors")
    old = path.read_bytes()

    def crash(*args):
        raise OSError("disk died")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        pl.save_task(net, "a", path, "rice")
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary file left


def test_loading_an_existing_task_name_is_refused(backbone, tmp_path):
    net = _trained_net(backbone)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="already exists"):
        pl.load_task(net, path)
    assert pl.load_task(net, path, task="a2") == "a2"


def test_unknown_format(backbone, tmp_path):
    with pytest.raises(ValueError, match="packed, rice"):
        pl.save_task(_trained_net(backbone), "a", tmp_path / "a.safetensors", "zip")


def test_files_are_created_with_the_umask_not_0600(backbone, tmp_path):
    old = os.umask(0o022)
    try:
        path = pl.save_task(_trained_net(backbone), "a", tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
