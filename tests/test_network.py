import pytest
import torch
import torchvision
from torch import nn

import piggylab as pl
from piggylab.tasks import TaskBatchNorm

ARCHITECTURES = ["resnet18", "resnet50", "vgg16", "vgg16_bn", "densenet121", "mobilenet_v3_small", "convnext_tiny", "vit_b_16"]


def _input_for(name: str) -> torch.Tensor:
    return torch.randn(2, 3, 224 if name == "vit_b_16" else 64, 224 if name == "vit_b_16" else 64)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_masks_every_conv_and_linear_of_torchvision_models(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    expected = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    expected += sum(m.in_proj_weight.numel() for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    expected -= classifier.weight.numel()
    net = pl.PiggybackNet(model, backbone_name=name)
    assert net.num_masked_weights == expected
    net.add_task("t", 7)
    x = _input_for(name)
    net.eval()
    with torch.no_grad():
        masked_out = net(x)
        plain = net.individual_network("t").eval()(x)
    assert masked_out.shape == (2, 7)
    assert torch.allclose(masked_out, plain, atol=1e-4)  # all-ones mask: the pretrained network
    net.train()
    net(x).sum().backward()
    scores = [masks.scores["t"] for _, masks, _ in net.masked_weights()]
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)
    assert all(p.grad is None for p in net.backbone_state().values())


def test_vit_attention_projections_are_masked():
    net = pl.PiggybackNet(torchvision.models.vit_b_16(weights=None))
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in net.masked_layers
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj" in net.masked_layers


def test_depthwise_convs_are_masked():
    net = pl.PiggybackNet(torchvision.models.mobilenet_v3_small(weights=None))
    depthwise = [n for n, (m, _) in net.masked_layers.items() if isinstance(m.base_layer, nn.Conv2d)
                 and m.base_layer.groups > 1]
    assert depthwise
    from piggylab.analysis import layer_sparsity
    net.add_task("t", 3)
    assert "depthwise conv" in set(layer_sparsity(net, "t")["kind"])


def test_backbone_is_frozen_and_never_in_task_parameters(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3, task_bn=True)
    shared = {id(t) for t in net.backbone_state().values()}
    assert all(not t.requires_grad for t in net.backbone_state().values())
    assert not shared & {id(p) for p in net.task_parameters("a")}


def test_add_switch_list_remove_tasks(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3)
    net.add_task("b", 5, task_bn=True)
    assert list(net.tasks) == ["a", "b"] and net.active_task == "b"
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    assert net(x).shape == (2, 5)
    net.set_task("a")
    assert net(x).shape == (2, 3)
    assert all(isinstance(bn, TaskBatchNorm) and "b" in bn.per_task and "a" not in bn.per_task for _, bn in net.batchnorms())
    net.remove_task("b")
    assert list(net.tasks) == ["a"]
    assert all(len(bn.per_task) == 0 for _, bn in net.batchnorms())


def test_bad_input(backbone):
    net = pl.PiggybackNet(backbone)
    with pytest.raises(RuntimeError, match="no active task"):
        net(torch.randn(1, 3, 32, 32))
    net.add_task("a", 3)
    with pytest.raises(KeyError, match="known tasks: a"):
        net.set_task("nope")
    with pytest.raises(ValueError, match="already exists"):
        net.add_task("a", 3)
    with pytest.raises(ValueError, match="task name"):
        net.add_task("has.dot", 3)
    for bad in (2.7, "ten", 0, True):
        with pytest.raises(ValueError, match="num_classes must be a positive integer"):
            net.add_task("b", bad)
    assert list(net.tasks) == ["a"]
    with pytest.raises(ValueError, match="no Conv2d, Linear"):
        pl.PiggybackNet(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no nn.Linear"):
        pl.PiggybackNet(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_individual_network_leaves_the_shared_network_intact(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    individual = net.individual_network("a")
    assert all(p.requires_grad for p in individual.parameters())
    with torch.no_grad():
        for p in individual.parameters():
            p.add_(1.0)
    assert torch.equal(net(x), before)


def test_frozen_batchnorm_matches_eval_mode_batchnorm():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_()
        bn.bias.uniform_()
    x = torch.randn(2, 4, 5, 5)
    expected = bn.eval()(x)
    assert torch.equal(TaskBatchNorm(bn)(x), expected)  # inference: the plain kernel
    x.requires_grad_(True)
    wrapped = TaskBatchNorm(bn)
    assert torch.allclose(wrapped(x), expected, atol=1e-6)  # training: one multiply-add
    with torch.no_grad():
        bn.running_var.mul_(4)  # new statistics are noticed (the scale and shift are cached)
    assert torch.allclose(wrapped(x), bn.eval()(x.detach()), atol=1e-6)
    low = x.detach().bfloat16().requires_grad_(True)
    assert wrapped(low).dtype == torch.bfloat16  # not promoted to the statistics' float32


def test_reserved_task_names_are_refused(backbone):
    net = pl.PiggybackNet(backbone)
    with pytest.raises(ValueError, match="reserved"):
        net.add_task("training", 3)
