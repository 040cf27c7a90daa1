"""Bad input is refused before anything changes: the trainer's and `evaluate`'s first-batch
checks (`piggylab.checks`), and class counts that are not positive integers."""

import pytest
import torch
from conftest import synthetic_loader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import piggylab as pl


def loader_of(x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


IMAGES, LABELS = torch.randn(16, 3, 32, 32), torch.arange(16) % 3
TASK = "piggyback training of task 'greek'"

BAD_BATCHES = {
    "empty loader": (loader_of(IMAGES[:0], LABELS[:0]), ValueError, f"{TASK}: the train loader is empty"),
    "label too large": (loader_of(IMAGES, LABELS + 1), ValueError,
                        rf"{TASK}: labels must be in \[0, 3\) \(the model gives 3 class scores\), got 3"),
    "negative label": (loader_of(IMAGES, LABELS - 1), ValueError, r"labels must be in \[0, 3\) .*got -1"),
    "float labels": (loader_of(IMAGES, LABELS.float()), TypeError,
                     rf"{TASK}: labels must be integer class indices \(e.g. torch.int64\), got torch.float32"),
    "one-hot labels": (loader_of(IMAGES, nn.functional.one_hot(LABELS, 3)), ValueError,
                       r"expected one label per image, labels of shape \(8,\), got \(8, 3\)"),
    "grey images": (loader_of(IMAGES[:, :1], LABELS), ValueError,
                    rf"{TASK}: expected images of shape \(N, 3, H, W\), got \(8, 1, 32, 32\) \(the first layer, "
                    r"backbone.conv1, is a Conv2d with 3 input channels\)"),
    "unbatched images": (loader_of(IMAGES[:, 0], LABELS), ValueError,
                         r"expected images of shape \(N, 3, H, W\), got \(8, 32, 32\)"),
    "uint8 images": (loader_of((IMAGES * 50).to(torch.uint8), LABELS), TypeError,
                     rf"{TASK}: images must be floating point \(e.g. torch.float32\), got torch.uint8"),
    "dict batches": ([{"image": IMAGES, "label": LABELS}], TypeError,
                     rf"{TASK}: the loader must give \(images, labels\) pairs, got dict"),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_a_bad_batch_is_refused_before_any_step_and_the_task_stays_trainable(backbone, case):
    loader, kind, message = BAD_BATCHES[case]
    net = pl.PiggybackNet(backbone, backbone_name="tiny-test")
    net.add_task("greek", 3, task_bn=True)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with pytest.raises(kind, match=message):
        pl.train(net, "greek", loader, epochs=1, device="cpu", progress=False)
    assert not net.is_frozen("greek")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # no step, no statistic moved
    history = pl.train(net, "greek", synthetic_loader(1, n=32), epochs=1, device="cpu", progress=False)
    assert len(history) == 1 and net.is_frozen("greek")


def test_an_empty_validation_loader_is_refused_before_training(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("greek", 3)
    steps = []
    with pytest.raises(ValueError, match=f"{TASK}: the validation loader is empty"):
        pl.fit_task(net, "greek", synthetic_loader(1), loader_of(IMAGES[:0], LABELS[:0]),
                    pl.TrainConfig(epochs=1, device="cpu"), progress=False,
                    callbacks={"on_step_end": lambda t, r: steps.append(r)})
    assert steps == []


def test_evaluate_refuses_what_the_trainer_refuses(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("greek", 3)
    net.add_task("fonts", 5)
    with pytest.raises(ValueError, match="evaluation of task 'greek': the loader is empty"):
        pl.evaluate(net, loader_of(IMAGES[:0], LABELS[:0]), task="greek", device="cpu")
    with pytest.raises(ValueError, match=r"evaluation of task 'greek': labels must be in \[0, 3\) .*got 3, 4"):
        pl.evaluate(net, loader_of(IMAGES, LABELS + 2), task="greek", device="cpu")
    assert pl.evaluate(net, loader_of(IMAGES, LABELS + 2), task="fonts", device="cpu") >= 0  # five classes: fine
    with pytest.raises(ValueError, match=r"evaluation of task 'fonts': expected images of shape \(N, 3, H, W\)"):
        pl.evaluate(net, loader_of(IMAGES[:, :2], LABELS), device="cpu")  # the active task
    with pytest.raises(TypeError, match="evaluation of task 'fonts': labels must be integer"):
        pl.evaluate(net, loader_of(IMAGES, LABELS.double()), device="cpu")
    with pytest.raises(ValueError, match=r"task 'fonts': expected images of shape \(N, 3, H, W\), got \(8, 32, 32\)"):
        pl.evaluate(net, loader_of(IMAGES[:, 0], LABELS), device="cpu")  # no channel dimension
    with pytest.raises(TypeError, match="evaluation of task 'fonts': images must be floating point"):
        pl.evaluate(net, loader_of((IMAGES * 255).to(torch.uint8), LABELS), device="cpu")


def test_a_plain_model_is_named_by_its_run_and_its_first_layer_may_be_linear():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    trainer = pl.Trainer(pl.TrainConfig("finetune", epochs=1, device="cpu"), progress=False)
    groups = [{"params": list(mlp.parameters()), "lr": 1e-2}]
    assert len(trainer.fit(mlp, groups, loader_of(torch.randn(16, 3, 2, 2), LABELS), describe="an MLP")) == 1
    with pytest.raises(ValueError, match=r"an MLP: expected inputs of shape \(N, 12\) or N inputs of 12 values, "
                                         r"got \(8, 5\) \(the first layer, 1, is a Linear with 12 input features\)"):
        trainer.fit(mlp, groups, loader_of(torch.randn(16, 5), LABELS), describe="an MLP")
    with pytest.raises(ValueError, match=r"^training: labels must be in \[0, 3\)"):
        trainer.fit(mlp, groups, loader_of(torch.randn(16, 12), LABELS + 5))


@pytest.mark.parametrize("bad", [2.7, "ten", 0, -3, True])
def test_num_classes_must_be_a_positive_integer(backbone, bad):
    net = pl.PiggybackNet(backbone)
    with pytest.raises(ValueError, match=f"num_classes must be a positive integer, got {bad!r}"):
        net.add_task("greek", bad)
    assert "greek" not in net.tasks
