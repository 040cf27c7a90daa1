"""The benchmark's smoke test (`--quick`, CPU), the memory-saving path it measures, and the
CUDA check of the core that runs wherever a GPU is at hand. No timing is asserted."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import piggylab as pl
from piggylab import bench
from piggylab.masked import MaskConfig, MaskedConv2d, MaskedLinear, StraightThroughMask

SECTIONS = ("train_step", "train_memory", "storage", "task_switch", "inference", "tasks")


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
    for row in result["tasks"]:
        memory = row["memory"]  # frozen tasks: their packed masks and heads, tensors and resident set alike
        assert memory["tensor_bytes"] == memory["packed_bytes"] + memory["head_bytes"]
        assert memory["one_bit_bytes"] <= memory["packed_bytes"] < memory["one_bit_bytes"] + memory["masked_layers"]
        assert 0 < memory["rss_bytes"] < memory["byte_per_weight_bytes"] / 2  # nowhere near a byte per weight
        assert all(n > 0 for b in row["mixed_batch"] for n in numbers([b["images_per_s"], b["speedup_over_one_by_one"]]))
    for row in result["storage"]:
        padding = row["packed_bits_per_weight"] * row["masked_weights"] - row["masked_weights"]
        assert 0 <= padding < 8 * row["masked_layers"]  # exactly 1 bit per weight, up to a byte per layer
        if row["zero_fraction"] <= 0.10:
            assert row["rice_bits_per_weight"] < 0.5


LAYERS = {"conv strided, grouped": (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
          "conv dilated": (nn.Conv2d(4, 6, 3, padding=(2, 1), dilation=(2, 1)), (2, 4, 9, 9)),
          "conv padding=same": (nn.Conv2d(4, 6, 3, padding="same"), (2, 4, 9, 9)),
          "conv on an unbatched image": (nn.Conv2d(4, 6, 3), (4, 9, 9)),
          "linear on 3-d input": (nn.Linear(4, 6), (2, 3, 4))}


def _wrapped(name, config):
    torch.manual_seed(0)
    layer, shape = LAYERS[name]
    wrapper = (MaskedConv2d if isinstance(layer, nn.Conv2d) else MaskedLinear)(layer)
    wrapper.masks.add_task("t", config, layer.weight)
    wrapper.masks.activate("t", config, layer.weight)
    layer.bias.requires_grad_(True)
    return wrapper, layer, torch.randn(shape, requires_grad=True)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("config", [MaskConfig(init="uniform"),
                                    MaskConfig(kind="ternary", init="uniform", grad_scaling="elementwise")])
def test_masked_layers_give_plain_autograds_gradients(name, config):
    """A masked conv or linear layer in training (one autograd Function, the masked weight
    remade in backward): the gradients of input, scores and bias are plain autograd's."""
    wrapper, layer, x = _wrapped(name, config)
    scores = wrapper.masks.scores["t"]
    plain = layer._conv_forward if isinstance(layer, nn.Conv2d) else (lambda x, w, b: F.linear(x, w, b))
    reference = plain(x, StraightThroughMask.apply(layer.weight, scores, config), layer.bias)
    expected = torch.autograd.grad(reference.square().sum(), (x, scores, layer.bias))
    out = wrapper(x)
    nodes = {type(out.grad_fn).__name__, type(out.grad_fn.next_functions[0][0]).__name__}  # (an unbatched squeeze)
    assert "MaskedLayerFunctionBackward" in nodes
    for got, want in zip(torch.autograd.grad(out.square().sum(), (x, scores, layer.bias)), expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["conv strided, grouped", "linear on 3-d input"])
def test_a_training_layer_keeps_no_masked_weight_for_backward(name):
    """What autograd keeps of a masked layer is the input, the frozen weight and the scores,
    which exist anyway: no weight-sized tensor more (the memory of fine-tuning)."""
    wrapper, layer, x = _wrapped(name, MaskConfig(init="uniform"))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        wrapper(x)
    weight_sized = [t for t in saved if t.shape == layer.weight.shape]
    assert len(weight_sized) == 2 and {t.data_ptr() for t in weight_sized} == {
        layer.weight.data_ptr(), wrapper.masks.scores["t"].data_ptr()}


def test_a_task_in_training_holds_no_cached_masked_weight(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("frozen", 3)
    net.freeze_task("frozen")
    assert all(masks.merged is not None for _, masks, _ in net.masked_weights())
    net.add_task("new", 3)
    assert all(masks.merged is None for _, masks, _ in net.masked_weights())


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
