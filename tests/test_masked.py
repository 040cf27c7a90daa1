"""The masked layer: thresholds, the straight-through gradient, packed masks, the wrappers."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from piggylab.masked import (MaskConfig, MaskedAttention, MaskedConv2d, MaskedLayerFunction, MaskedLinear,
                             StraightThroughMask, TaskMasks, init_scores, pack_mask, packed_size, threshold_scores,
                             unpack_mask)


def test_binary_threshold_is_strictly_above_tau():
    scores = torch.tensor([-1.0, 0.0, 5e-3, 5.0001e-3, 1.0])
    assert threshold_scores(scores, "binary", 5e-3).tolist() == [False, False, False, True, True]


def test_ternary_uses_the_references_two_cutoffs():
    scores = torch.tensor([-1.0, -1e-9, 0.0, 5e-3, 6e-3])
    assert threshold_scores(scores, "ternary", 5e-3).tolist() == [-1, -1, 0, 0, 1]


def test_straight_through_gradient_is_grad_times_weight():
    weight = torch.randn(4, 5)
    scores = torch.randn(4, 5, requires_grad=True)
    upstream = torch.randn(4, 5)
    out = StraightThroughMask.apply(weight, scores, MaskConfig())
    assert torch.equal(out, weight * (scores > 5e-3))
    out.backward(upstream)
    assert torch.allclose(scores.grad, upstream * weight)


@pytest.mark.parametrize("scaling, expected", [
    ("layer", lambda g, w: g * w / w.abs().mean()),
    ("elementwise", lambda g, w: g * w / w.abs()),
])
def test_gradient_scaling_divides_by_weight_magnitude(scaling, expected):
    weight = torch.randn(3, 3) + 0.1
    scores = torch.zeros(3, 3, requires_grad=True)
    upstream = torch.randn(3, 3)
    StraightThroughMask.apply(weight, scores, MaskConfig(grad_scaling=scaling)).backward(upstream)
    assert torch.allclose(scores.grad, expected(upstream, weight), rtol=1e-5)


def test_backbone_weight_gets_no_gradient():
    weight = torch.randn(3, 3, requires_grad=True)
    scores = torch.full((3, 3), 1e-2, requires_grad=True)
    StraightThroughMask.apply(weight, scores, MaskConfig()).sum().backward()
    assert weight.grad is None


def test_init_schemes():
    torch.manual_seed(0)
    weight = torch.randn(64, 64) * 0.05
    constant = init_scores(weight, MaskConfig(init="constant"))
    assert torch.all(constant == 1e-2) and threshold_scores(constant).all()
    uniform = init_scores(weight, MaskConfig(init="uniform", scale=0.1))
    assert uniform.min() >= -0.1 and uniform.max() <= 0.1
    on = threshold_scores(uniform).float().mean().item()
    assert 0.4 < on < 0.6  # roughly half the weights start off
    by_weight = init_scores(weight, MaskConfig(init="weight"))
    assert torch.allclose(by_weight, torch.full_like(weight, weight.abs().mean().item()))


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "quaternary"}, "binary, ternary"),
    ({"init": "zeros"}, "constant, uniform, weight"),
    ({"grad_scaling": "huge"}, "none, layer, elementwise"),
    ({"threshold": -1.0}, "threshold"),
    ({"threshold": math.nan}, "threshold"),
    ({"threshold": "tiny"}, "threshold"),
    ({"scale": 0.0}, "scale"),
    ({"scale": math.inf}, "scale"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MaskConfig(**kwargs)


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 864, 1001])
def test_packing_is_one_bit_per_weight_in_numpys_order_and_round_trips(numel):
    g = torch.Generator().manual_seed(numel)
    binary = torch.rand(numel, generator=g) > 0.3
    packed = pack_mask(binary, "binary")
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(numel, "binary") == math.ceil(numel / 8)
    assert np.array_equal(packed.numpy(), np.packbits(binary.numpy()))
    assert torch.equal(unpack_mask(packed, "binary", (numel,)).bool(), binary)
    ternary = torch.randint(-1, 2, (numel,), generator=g, dtype=torch.int8)
    packed = pack_mask(ternary, "ternary")
    assert packed.numel() == packed_size(numel, "ternary") == math.ceil(numel / 4)
    assert torch.equal(unpack_mask(packed, "ternary", (numel,)), ternary)


def _reference(x, weight, scores, bias, config, conv):
    """The same layer by plain autograd: the masked weight as a tensor, kept for backward."""
    masked = StraightThroughMask.apply(weight, scores, config)
    return F.linear(x, masked, bias) if conv is None else F.conv2d(x, masked, bias, *conv)


@pytest.mark.parametrize("kind, scaling", [("binary", "none"), ("ternary", "none"), ("binary", "layer")])
@pytest.mark.parametrize("shape, conv", [
    ((6, 4, 3, 3), ((1, 1), (1, 1), (1, 1), 1)),
    ((6, 2, 3, 3), ((2, 2), (0, 0), (1, 1), 2)),      # strided, grouped
    ((5, 7), None),                                    # linear
])
def test_the_layer_function_matches_plain_autograd(kind, scaling, shape, conv):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=g)
    bias = torch.randn(shape[0], generator=g, requires_grad=True)
    config = MaskConfig(kind=kind, grad_scaling=scaling)
    x = torch.randn((3, 4, 9, 9) if conv else (3, 2, 7), generator=g, requires_grad=True)
    grads = []
    for layer in (_reference, MaskedLayerFunction.apply):
        scores = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 1e-2).requires_grad_(True)
        out = layer(x, weight, scores, bias, config, conv)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), x.grad.clone(), scores.grad.clone(), bias.grad.clone()))
        x.grad, bias.grad = None, None
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_task_masks_train_freeze_into_bits_and_merge():
    weight = torch.randn(8, 3, 3, 3)
    masks = TaskMasks(weight.shape)
    config = MaskConfig()
    masks.add_task("a", config, weight)
    masks.activate("a", config, weight)
    assert masks.merged is None and torch.equal(masks.weight(weight), weight)  # all ones at the start
    with torch.no_grad():
        masks.scores["a"][0].fill_(-1.0)
    expected = weight.clone()
    expected[0] = 0
    masks.freeze("a", config)
    assert "a" not in masks.scores and masks.packed["a"].numel() == weight.numel() // 8  # 1 bit per weight
    assert masks.mask("a", config).dtype == torch.bool
    masks.activate("a", config, weight)
    assert torch.equal(masks.merged, expected) and masks.weight(weight) is masks.merged
    masks.add_task("b", config, weight)
    masks.activate("b", config, weight)
    assert masks.merged is None  # no stale copy while a task trains
    masks.remove_task("a")
    assert "a" not in masks.packed and list(masks.scores) == ["b"]


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(4, 6, 3, padding=1), lambda: nn.Linear(5, 3),
                                  lambda: nn.Conv2d(4, 6, 3, padding="same", bias=False)])
def test_wrappers_compute_the_plain_layer_and_unwrap_to_it(make):
    torch.manual_seed(0)
    plain = make()
    wrapper = (MaskedConv2d if isinstance(plain, nn.Conv2d) else MaskedLinear)(plain)
    x = torch.randn(2, 4, 8, 8) if isinstance(plain, nn.Conv2d) else torch.randn(2, 5)
    config = MaskConfig()
    wrapper.masks.add_task("a", config, plain.weight)
    wrapper.masks.activate("a", config, plain.weight)
    assert torch.equal(wrapper(x), plain(x))
    out = wrapper(x)
    out.sum().backward()
    assert wrapper.masks.scores["a"].grad is not None and plain.weight.grad is None
    if isinstance(plain, nn.Conv2d):
        assert torch.allclose(wrapper(x[0]), plain(x[0]), atol=1e-6)  # an unbatched image
    unwrapped = wrapper.unwrap()
    assert type(unwrapped) is type(plain) and unwrapped is not plain
    assert torch.equal(unwrapped(x), plain(x))


def test_attention_is_the_one_place_of_a_parametrization():
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    expected = attention(x, x, x)[0]
    wrapper = MaskedAttention(attention)
    weights = wrapper.masked_weights()
    assert list(weights) == ["in_proj_weight", "out_proj.weight"]
    config = MaskConfig()
    for masks, original in weights.values():
        masks.add_task("a", config, original)
        masks.activate("a", config, original)
    assert torch.allclose(wrapper(x, x, x)[0], expected, atol=1e-6)
    wrapper(x, x, x)[0].sum().backward()
    assert all(masks.scores["a"].grad is not None for masks, _ in weights.values())
    plain = wrapper.unwrap()
    assert type(plain) is nn.MultiheadAttention and torch.allclose(plain(x, x, x)[0], expected, atol=1e-6)


EXCLUDED = {
    "a Tensor subclass": r"__torch_function__|as_subclass|class \w+\((torch\.)?Tensor\)",
    "saved-tensor hooks": r"saved_tensors_hooks",
    "context variables": r"ContextVar\b",
    "a class swap": r"__class__\s*=",
    "another module's _modules": r"\._modules\[",
    "a monkey-patched property": r"setattr\(type\(",
}


@pytest.mark.parametrize("what", list(EXCLUDED))
def test_no_file_of_the_package_uses_an_excluded_mechanism(what):
    package = Path(__file__).resolve().parent.parent / "piggylab"
    found = [f"{path.name}:{n}" for path in sorted(package.glob("**/*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(EXCLUDED[what], line)]
    assert not found, f"{what} in {found}"
