import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from piggylab.masks import MaskConfig, MaskedWeight, init_scores, masked_weight, threshold_scores


def test_binary_threshold_is_strictly_above_tau():
    scores = torch.tensor([-1.0, 0.0, 5e-3, 5.0001e-3, 1.0])
    assert threshold_scores(scores, "binary", 5e-3).tolist() == [False, False, False, True, True]


def test_ternary_uses_the_references_two_cutoffs():
    scores = torch.tensor([-1.0, -1e-9, 0.0, 5e-3, 6e-3])
    assert threshold_scores(scores, "ternary", 5e-3).tolist() == [-1, -1, 0, 0, 1]


def test_straight_through_gradient_is_grad_times_weight():
    weight = torch.randn(4, 5)
    scores = torch.randn(4, 5, requires_grad=True) * 1.0
    scores.retain_grad()
    upstream = torch.randn(4, 5)
    out = masked_weight(weight, scores, MaskConfig())
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
    masked_weight(weight, scores, MaskConfig(grad_scaling=scaling)).backward(upstream)
    assert torch.allclose(scores.grad, expected(upstream, weight), rtol=1e-5)


def test_backbone_weight_gets_no_gradient():
    weight = torch.randn(3, 3, requires_grad=True)
    scores = torch.full((3, 3), 1e-2, requires_grad=True)
    masked_weight(weight, scores, MaskConfig()).sum().backward()
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
    ({"scale": 0.0}, "scale"),
    ({"scale": math.inf}, "scale"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskConfig(**kwargs)


def test_parametrization_keeps_original_and_uses_merged_weights_when_given():
    layer = nn.Linear(6, 4)
    original = layer.weight.detach().clone()
    parametrize.register_parametrization(layer, "weight", MaskedWeight())
    p = layer.parametrizations.weight[0]
    assert torch.equal(layer.weight, original)  # no active task: the backbone itself
    p.add_task("a", layer.parametrizations.weight.original, MaskConfig())
    p.active = "a"
    with torch.no_grad():
        p.scores["a"][0].fill_(-1.0)
    assert torch.equal(layer.weight[0], torch.zeros(6)) and torch.equal(layer.weight[1:], original[1:])
    p.freeze("a")
    assert "a" not in p.scores and p.mask("a").dtype == torch.bool
    expected = original.clone()
    expected[0] = 0
    assert torch.equal(layer.weight, expected)  # computed at each call when standalone
    merged = torch.full_like(original, 7.0)
    p.state.merged, p.slot = [torch.zeros(1), merged], 1
    assert layer.weight is merged  # a network's merged weight for this layer's slot
    assert torch.equal(layer.parametrizations.weight.original, original)
