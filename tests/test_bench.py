"""The benchmark's smoke test (`--quick`, CPU), the memory-saving paths it measures, and the
CUDA check of the core that runs wherever a GPU is at hand. No timing is asserted."""

import json
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import piggylab as pl
from piggylab import bench
from piggylab.masks import MaskConfig, masked_weight, recompute_masked_weights

SECTIONS = ("train_step", "train_memory", "storage", "task_switch", "inference")


def numbers(tree):
    """Every number (not bool) in a nested JSON value."""
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_quick_bench_writes_every_section(tmp_path):
    path = tmp_path / "bench.json"
    bench.main(["--quick", "--device", "cpu", "--json", str(path)])
    result = json.loads(path.read_text())
    assert all(result[s] for s in SECTIONS)
    assert all(math.isfinite(n) and n >= 0 for s in SECTIONS for n in numbers(result[s]))
    measured = [row[key] for key, section in [("ms", "train_step"), ("mib", "train_memory"), ("ms", "task_switch"),
                                             ("images_per_s", "inference")] for row in result[section]]
    measured += [row[key] for section, key in [("train_step", "ratio_to_finetune"), ("train_memory", "ratio_to_finetune"),
                                             ("inference", "throughput_ratio_to_plain")] for row in result[section]]
    assert measured and all(n > 0 for n in numbers(measured))
    for row in result["storage"]:
        padding = row["packed_bits_per_weight"] * row["masked_weights"] - row["masked_weights"]
        assert 0 <= padding < 8 * row["masked_layers"]  # exactly 1 bit per weight, up to a byte per layer
        if row["zero_fraction"] <= 0.10:
            assert row["rice_bits_per_weight"] < 0.5


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


@pytest.mark.parametrize("config", [MaskConfig(init="uniform"), MaskConfig(kind="ternary", init="uniform"),
                                    MaskConfig(init="uniform", grad_scaling="layer")])
def test_recomputed_masked_weights_give_the_same_gradients(config):
    net = pl.PiggybackNet(small_convnet())
    net.add_task("t", 4, mask=config)
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for context in (torch.enable_grad(), recompute_masked_weights()):
        with context:
            loss = net(x).square().sum()
        params = net.task_parameters("t")
        grads.append(torch.autograd.grad(loss, params))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("use", {"matmul (saved-tensor hooks)": lambda x, w: w @ x.t(),
                                 "linear (fused)": lambda x, w: F.linear(x, w)}.items(), ids=lambda u: u[0])
@pytest.mark.parametrize("recompute", [False, True])
def test_recomputing_keeps_no_masked_weight_and_notices_changed_scores(recompute, use):
    weight, scores = torch.randn(5, 5), torch.full((5, 5), 1e-2, requires_grad=True)
    with recompute_masked_weights() if recompute else torch.enable_grad():
        effective = masked_weight(weight, scores, MaskConfig())
        out = use[1](torch.randn(3, 5, requires_grad=True), effective)  # keeps its weight for backward
    kept = weakref.ref(effective)
    del effective
    assert (kept() is None) == recompute
    with torch.no_grad():
        scores.add_(1.0)
    if recompute:
        with pytest.raises(RuntimeError, match="modified in place"):
            out.sum().backward()


LAYERS = {"conv strided, grouped": (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
          "conv dilated": (nn.Conv2d(4, 6, 3, padding=(2, 1), dilation=(2, 1)), (2, 4, 9, 9)),
          "conv padding=same (not fused)": (nn.Conv2d(4, 6, 3, padding="same"), (2, 4, 9, 9)),
          "conv on an unbatched image (not fused)": (nn.Conv2d(4, 6, 3), (4, 9, 9)),
          "linear on 3-d input": (nn.Linear(4, 6), (2, 3, 4))}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("config", [MaskConfig(init="uniform"), MaskConfig(kind="ternary", init="uniform", grad_scaling="elementwise")])
def test_fused_masked_layers_give_autograds_gradients(name, config):
    """conv2d and linear on a masked weight while recomputing: the gradients of input, scores
    and bias are those of plain autograd, and their backward is the fused one."""
    torch.manual_seed(0)
    layer, shape = LAYERS[name]
    layer.bias.requires_grad_(True)
    scores = torch.nn.Parameter(pl.masks.init_scores(layer.weight, config))
    x = torch.randn(shape, requires_grad=True)
    run = (lambda w: layer._conv_forward(x, w, layer.bias)) if isinstance(layer, nn.Conv2d) else \
        (lambda w: F.linear(x, w, layer.bias))
    grads, nodes = [], []
    for context in (torch.enable_grad(), recompute_masked_weights()):
        with context:
            out = run(masked_weight(layer.weight.detach(), scores, config))
        nodes.append(type(out.grad_fn).__name__)
        grads.append(torch.autograd.grad(out.square().sum(), (x, scores, layer.bias)))
    for plain, fused in zip(*grads):
        torch.testing.assert_close(fused, plain)
    assert (nodes[1] == "_MaskedLayerBackward") == ("not fused" not in name)


def test_a_task_in_training_holds_no_cached_masked_weight(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("frozen", 3)
    net.freeze_task("frozen")
    assert net._flat.merged is not None and net._state.merged is not None
    net.add_task("new", 3)
    assert net._flat.merged is None and net._state.merged is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_training_task_files_and_isolation(tmp_path, backbone, loaders):
    """On CUDA with AMP: train a task, save and reload it, and train another task without
    changing a single bit of the first task's predictions."""
    net = pl.PiggybackNet(backbone, backbone_name="tiny")
    config = {"epochs": 1, "device": "cuda", "amp": True, "progress": False}
    net.add_task("a", 3)
    pl.train(net, "a", *loaders, **config)
    x = next(iter(loaders[1]))[0].cuda()
    net.eval().set_task("a")
    with torch.no_grad():
        before = net(x)
    path = pl.save_task(net, "a", tmp_path / "a.safetensors", fmt="rice")
    net.add_task("b", 3)
    history = pl.train(net, "b", *loaders, **config)
    assert history["loss"].notna().all()
    net.eval().set_task("a")
    fresh = pl.PiggybackNet(backbone, backbone_name="tiny").cuda().eval()
    pl.load_task(fresh, path)
    fresh.set_task("a")
    with torch.no_grad():
        assert torch.equal(net(x), before)
        assert torch.equal(fresh(x), before)
