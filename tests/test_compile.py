"""torch.compile and torch.export of a PiggybackNet: the compiled network trains and infers like
the eager one, and an exported program computes what the network does.

Compiled with the "aot_eager" backend: AOTAutograd traces forward and backward as inductor
would, without inductor's C++ code generation (minutes on CPU). ``fullgraph=True`` makes a
graph break an error, so the whole network (masked layers, task batchnorm, heads) is traced.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import piggylab as pl

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def net(backbone) -> pl.PiggybackNet:
    """A frozen task and a task still holding scores (with its own batchnorm), both masks mixed."""
    net = pl.PiggybackNet(backbone)
    mixed = pl.MaskConfig(init="uniform")  # scores in U(-1e-2, 1e-2): part of each mask starts off
    net.add_task("frozen", 3, mask=mixed, seed=0)
    net.freeze_task("frozen")
    net.add_task("scores", 3, mask=mixed, task_bn=True, seed=1)
    return net


def _batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)


def _gradients(model: torch.nn.Module, net: pl.PiggybackNet, x: torch.Tensor, y: torch.Tensor):
    net.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_training_matches_eager(net):
    net.set_task("scores")
    net.train()
    compiled = torch.compile(net, backend=BACKEND, fullgraph=True)
    x, y = _batch(0)
    eager_logits, eager_grads = _gradients(net, net, x, y)
    logits, grads = _gradients(compiled, net, x, y)
    _close(logits, eager_logits)
    assert grads.keys() == eager_grads.keys()
    assert sum("masks.scores.scores" in name for name in grads) == len(list(net.masked_weights()))
    assert any("per_task.scores" in name for name in grads) and any(".heads.scores." in name for name in grads)
    assert not any("base_layer" in name or "shared" in name for name in grads)  # the backbone stays frozen
    for name, grad in eager_grads.items():
        _close(grads[name], grad)

    # a step moves the scores and flips some mask entries: the compiled graph reads the new scores
    before = {name: m.clone() for name, m in net.masks("scores").items()}
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad.sign() * 1e-2
    assert any(not torch.equal(before[name], m) for name, m in net.masks("scores").items())
    x, y = _batch(1)
    eager_logits, eager_grads = _gradients(net, net, x, y)
    logits, grads = _gradients(compiled, net, x, y)
    _close(logits, eager_logits)
    for name, grad in eager_grads.items():
        _close(grads[name], grad)


def test_compiled_inference_matches_eager_and_follows_task_switches(net):
    net.eval()
    compiled = torch.compile(net, backend=BACKEND, fullgraph=True)
    x, _ = _batch(2)
    outputs = {}
    for task in ("frozen", "scores", "frozen"):
        net.set_task(task)
        with torch.no_grad():
            outputs[task] = compiled(x)
            _close(outputs[task], net(x))
    assert not torch.allclose(outputs["frozen"], outputs["scores"])  # the switch changed what was computed


@pytest.mark.parametrize("task", ["frozen", "scores"])
def test_exported_program_computes_the_network(net, task):
    other = "scores" if task == "frozen" else "frozen"
    net.set_task(task)
    net.eval()
    x, _ = _batch(3)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    exported = program.module()
    with torch.no_grad():
        expected = net(x)
        _close(exported(x), expected)
        _close(exported(x[:2]), net(x[:2]))  # any batch size, not only the traced one
        net.set_task(other)  # the program keeps the task it was exported with
        _close(exported(x), expected)
        assert not torch.allclose(net(x), expected)
