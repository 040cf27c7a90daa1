"""A task exported as a plain model: the backbone's own class with the task baked in, loadable
without piggylab, computing exactly what the network computes; its files and their refusals."""

import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import piggylab as pl
from piggylab.cli import main
from piggylab.export import EXPORT_FORMATS, example_input, export_difference, export_task_file, write_export
from conftest import random_masks


def trained_like(net, task, num_classes, seed, task_bn=False):
    """A frozen task with a random mask, head and (task BN) statistics, as training leaves one."""
    net.add_task(task, num_classes, masks=random_masks(net, 0.1, seed), task_bn=task_bn, seed=seed)
    with torch.no_grad():
        for _, bn in net.batchnorms():
            if task in bn.per_task:
                bn.per_task[task].running_mean.uniform_(-0.2, 0.2)
                bn.per_task[task].weight.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def resnet():
    """A random torchvision resnet18 (its classifier's 1000 classes, as ImageNet weights have),
    with two frozen tasks, one with its own batchnorm."""
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18()
    net = pl.PiggybackNet(backbone, backbone_name="resnet18")
    trained_like(net, "birds", 5, seed=1, task_bn=True)
    trained_like(net, "cars", 7, seed=2)
    return backbone, net.eval()


@pytest.mark.parametrize("task", ["birds", "cars"])
def test_an_exported_task_is_the_backbones_class_and_computes_exactly(resnet, task):
    _, net = resnet
    net.set_task("cars")
    plain = pl.export_task(net, task)
    assert type(plain) is torchvision.models.ResNet and plain.fc.out_features == net.task(task).num_classes
    assert not plain.training and not any(p.requires_grad for p in plain.parameters())
    assert net.active_task == "cars"  # the network is unchanged
    fresh = torchvision.models.resnet18(num_classes=net.task(task).num_classes)
    fresh.load_state_dict(plain.state_dict())  # the keys and shapes of a fresh model
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    net.set_task(task)
    with torch.no_grad():
        assert torch.equal(plain(x), net(x))  # float32 on the CPU: exactly


def test_the_exported_state_loads_where_piggylab_is_never_imported(resnet, tmp_path):
    """`piggylab export` of a task file, then a fresh `torchvision.models.resnet18(num_classes=5)`
    in another process that never imports piggylab loads it and computes the network's logits."""
    backbone, net = resnet
    save_file(backbone.state_dict(), tmp_path / "resnet18.safetensors")
    pl.save_task(net, "birds", tmp_path / "birds.safetensors")
    out = tmp_path / "birds-plain.safetensors"
    assert main(["export", str(tmp_path / "birds.safetensors"), str(out), "--backbone", "resnet18",
                 "--weights", str(tmp_path / "resnet18.safetensors"), "--format", "safetensors",
                 "--image-size", "40"]) == 0
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    net.set_task("birds")
    with torch.no_grad():
        save_file({"x": x, "expected": net(x)}, tmp_path / "check.safetensors")
    script = f"""
import sys
import torch, torchvision
from safetensors.torch import load_file
model = torchvision.models.resnet18(num_classes=5).eval()
model.load_state_dict(load_file({str(out)!r}))
check = load_file({str(tmp_path / 'check.safetensors')!r})
with torch.no_grad():
    same = torch.equal(model(check["x"]), check["expected"])
assert not any(name.startswith("piggylab") for name in sys.modules), "piggylab was imported"
print("identical" if same else "different")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "identical"


def test_every_file_format_computes_the_network(backbone, tmp_path):
    torch.manual_seed(0)
    net = pl.PiggybackNet(backbone, backbone_name="tiny")
    trained_like(net, "a", 4, seed=1, task_bn=True)
    net.eval()
    plain = pl.export_task(net, "a")
    x = example_input(plain, 32, batch=3, seed=5)  # another batch size than traced: the batch is dynamic
    for fmt in EXPORT_FORMATS:
        path = write_export(plain, tmp_path / f"a.{fmt}", fmt, example_input(plain, 32))
        difference = export_difference(net, "a", path, fmt, x)
        assert difference <= 1e-4 if fmt == "onnx" else difference == 0.0, (fmt, difference)


def test_bad_input_gets_a_clear_error(resnet, backbone, tmp_path, capsys):
    _, net = resnet
    with pytest.raises(KeyError, match="unknown task 'nope'; known tasks: birds, cars"):
        pl.export_task(net, "nope")
    with pytest.raises(ValueError, match="unknown export format 'zip'; choose one of safetensors, torchscript, pt2, onnx"):
        write_export(pl.export_task(net, "cars"), tmp_path / "x", "zip", torch.zeros(1, 3, 32, 32))

    tiny = pl.PiggybackNet(backbone, backbone_name="tiny")
    tiny.add_task("a", 3)
    task_file = pl.save_task(tiny, "a", tmp_path / "a.safetensors")
    with pytest.raises(pl.TaskFileError, match=f"fingerprint {tiny.fingerprint()}.*resnet18.*has fingerprint"):
        export_task_file(task_file, tmp_path / "out", backbone="resnet18", weights=None)

    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"keep me")
    backbone_file = tmp_path / "tiny.safetensors"
    save_file(backbone.state_dict(), backbone_file, metadata={"widths": "[8, 16, 32]", "blocks": "1"})
    args = ["export", str(task_file), str(existing), "--backbone", "tiny", "--weights", str(backbone_file)]
    assert main([*args, "--format", "zip"]) == 2
    assert "unknown export format 'zip'" in capsys.readouterr().err
    assert main([*args, "--format", "safetensors"]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert main([*args, "--format", "safetensors", "--force"]) == 0
    assert "largest output difference to the network: 0" in capsys.readouterr().out
    assert main(["export", str(task_file), str(tmp_path / "o"), "--backbone", "resnet18", "--weights", "none",
                 "--format", "onnx"]) == 2
    assert "fingerprint" in capsys.readouterr().err
