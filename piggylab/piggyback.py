"""One frozen backbone, many tasks, each a learned binary mask: the piggyback network (paper §3, §5.3).

`PiggybackNet` is a `piggylab.tasks.MultiTaskNet` whose masked layers keep, per task, the
mask's scores while it trains and its packed 1-bit mask once frozen
(`piggylab.masked.TaskMasks`). Each task also has its own head and, optionally, its own
batchnorm (§5.3). The backbone never changes, so no task can disturb another, and a task is
the same whatever was added before it.

This module holds tasks and says which of their parameters each training method trains
(`training_groups`); it does not train them (`piggylab.train`) or write them to disk
(`piggylab.storage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .checks import check_choice
from .masked import MaskConfig, TaskMasks, pack_mask, packed_size
from .tasks import BN_MODES, MultiTaskNet, Task

METHODS = ("piggyback", "finetune", "classifier")
"""How a task can be trained: its mask and head (`piggyback`), a full copy of the network
(`finetune`, the paper's "individual networks"), or its head alone (`classifier`)."""


@dataclass
class PiggybackTask(Task):
    """A piggyback task: how its mask is made, and whether it is trained and frozen."""

    mask: MaskConfig = field(default_factory=MaskConfig)
    frozen: bool = False


class PiggybackNet(MultiTaskNet):
    """A frozen backbone serving many tasks through learned weight masks.

    >>> net = PiggybackNet(torchvision.models.resnet18(), backbone_name="resnet18")
    >>> net.add_task("flowers", num_classes=102)   # mask all ones: the pretrained network
    >>> net.set_task("flowers"); logits = net(images)

    Masked: every Conv2d/Linear weight but the classifier's, and the projection weights of
    `nn.MultiheadAttention` (ViT attention). Not masked (frozen and shared): biases,
    batchnorm/layernorm parameters, embeddings such as ViT's class token and position
    embedding, and ConvNeXt's layer scales, as in the paper where only conv/fc weights are.
    A frozen task keeps 1 bit per masked weight in memory (2 for ternary); switching to it
    computes its masked weights once, so it then runs as fast as the plain backbone.
    """

    task_type = PiggybackTask
    tasks: dict[str, PiggybackTask]

    def __init__(self, backbone: nn.Module, *, backbone_name: str = "backbone", classifier: str | None = None) -> None:
        super().__init__(backbone, backbone_name=backbone_name, classifier=classifier, make_masks=TaskMasks)

    # -- tasks -------------------------------------------------------------------------------
    def add_task(self, task: str, num_classes: int, *, mask: MaskConfig | None = None, task_bn: bool = False,
                 class_names: Sequence[str] | None = None, activate: bool = True, seed: int | None = None,
                 masks: dict[str, Tensor] | None = None, packed: bool = False) -> PiggybackTask:
        """Add a task with a fresh head; by default it becomes the active task.

        Without `masks` the task gets fresh scores to train. With the default `MaskConfig`
        (binary, tau 5e-3, constant init 1e-2) the mask starts all ones, i.e. the new task
        starts from the pretrained network (paper §3). With a `seed`, the head and scores are
        drawn from their own RNG, so a task starts the same whatever tasks were added before it.

        With `masks` (per masked weight, as `set_masks` takes them; ``packed=True``: their
        packed bytes) the task is added frozen, straight into its packed form: no scores are
        ever made for it (a task file or another network's task, `piggylab.storage.load_task`).
        The masks are checked before anything is added.
        """
        mask = mask or MaskConfig()
        streams = None if masks is None else self._packed_streams(masks, mask.kind, packed)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            info = self.new_task(task, num_classes, class_names, mask=mask, frozen=streams is not None)
            for i, (_, layer_masks, weight) in enumerate(self.masked_weights()):
                if streams is None:
                    layer_masks.add_task(task, mask, weight)
                else:
                    layer_masks.set_packed(task, streams[i])
        if task_bn:
            self.add_task_bn(task)
        if activate or self.active_task is None:
            self.set_task(task)
        return info

    def activate_weights(self, task: PiggybackTask | None) -> None:
        """Every masked layer computes `task`: a frozen task's merged weights are computed now,
        one multiply of each frozen weight by the unpacked mask; a task still holding scores
        masks at every forward, and no merged weights are kept while it trains."""
        for _, masks, weight in self.masked_weights():
            masks.activate(None if task is None else task.name, None if task is None else task.mask, weight)

    def freeze_task(self, task: str) -> None:
        """Replace the task's scores by its packed thresholded masks: all a trained task keeps (§3)."""
        info = self.check_task(task)
        for _, masks, _ in self.masked_weights():
            masks.freeze(task, info.mask)
        info.frozen = True
        if self.active_task == task:
            self.set_task(task)

    def is_frozen(self, task: str) -> bool:
        return self.check_task(task).frozen

    def masks(self, task: str) -> dict[str, Tensor]:
        """Per masked weight, the task's mask (bool for binary, int8 for ternary)."""
        info = self.check_task(task)
        return {layer: masks.mask(task, info.mask) for layer, masks, _ in self.masked_weights()}

    def packed_masks(self, task: str) -> dict[str, Tensor]:
        """Per masked weight, the frozen task's packed mask (`piggylab.masked.pack_mask`)."""
        if not self.is_frozen(task):
            raise ValueError(f"task {task!r} still has scores; freeze it first (freeze_task)")
        return {layer: masks.packed[task] for layer, masks, _ in self.masked_weights()}

    def _packed_streams(self, masks: dict[str, Tensor], kind: str, packed: bool) -> list[Tensor]:
        """Per masked weight, in order, the packed bytes of `masks` (`set_masks`' argument), on the
        weight's device; every mask is checked first (a KeyError or ValueError names the first bad one)."""
        missing = [layer for layer in self.masked_layers if layer not in masks]
        if missing:
            raise KeyError(f"no mask for {len(missing)} masked layer(s), e.g. {missing[0]!r}")
        for layer, _, weight in self.masked_weights():
            given = masks[layer]
            expected = (packed_size(weight.numel(), kind),) if packed else tuple(weight.shape)
            if tuple(given.shape) != expected:
                what = "packed mask" if packed else "mask"
                raise ValueError(f"{what} for {layer} has shape {tuple(given.shape)}, expected {expected}")
        streams = []
        for layer, _, weight in self.masked_weights():
            given = masks[layer].to(weight.device)
            streams.append(given if packed else pack_mask(given, kind))
        return streams

    def set_masks(self, task: str, masks: dict[str, Tensor], *, packed: bool = False) -> None:
        """Fix the task's masks and freeze it (for loading): bool/{0, 1} (binary) or {-1, 0, 1}
        (ternary) tensors shaped like the weights, or with ``packed=True`` their packed bytes.
        Every mask is checked before any is set, so a bad one leaves the task as it was."""
        info = self.check_task(task)
        streams = self._packed_streams(masks, info.mask.kind, packed)
        for (_, layer_masks, _), stream in zip(self.masked_weights(), streams):
            layer_masks.set_packed(task, stream)
        info.frozen = True
        if self.active_task == task:
            self.set_task(task)

    # -- training ----------------------------------------------------------------------------
    def task_parameters(self, task: str, *, scores: bool = True, head: bool = True, bn: bool = True) -> list[nn.Parameter]:
        """The trainable tensors of one task (never a backbone tensor)."""
        self.check_task(task)
        params: list[nn.Parameter] = []
        if scores:
            params += [masks.scores[task] for _, masks, _ in self.masked_weights() if task in masks.scores]
        if head:
            params += list(self.heads.heads[task].parameters())
        if bn:
            params += [p for _, b in self.batchnorms() if task in b.per_task for p in b.per_task[task].parameters()]
        return params

    def training_groups(self, task: str, method: str = "piggyback", *, lr: float, lr_scores: float | None = None,
                        bn_mode: str | None = None, scores_from: int = 0) -> tuple[nn.Module, list[dict]]:
        """What training `task` by `method` trains: ``(model, parameter groups)``.

        - `piggyback`: this network; the task's head (and task BN) at `lr`, its scores at
          `lr_scores` (§3; the task must not be frozen yet).
        - `classifier`: this network with the task's mask frozen as it is (all ones for a new
          task), so only the head (and task BN) train, at `lr`, and no gradient flows through
          the backbone.
        - `finetune`: `individual_network`, a plain copy of the whole network for the task,
          every tensor at `lr` (the paper's "individual networks"; BN trained).

        `bn_mode` `task` gives the task its own BN first (§5.3); `frozen` refuses a task that
        has one; None keeps the task's own setting. `scores_from`: the epoch from which the
        scores train (their group's ``start_epoch``, `piggylab.train.learning_rate_schedule`):
        before it the head trains alone (a head warm-up).
        """
        check_choice(method, METHODS, "method")
        info = self.check_task(task)
        if bn_mode is not None:
            check_choice(bn_mode, BN_MODES, "bn_mode")
            if bn_mode == "task" and not info.task_bn:
                self.add_task_bn(task)
            elif bn_mode == "frozen" and info.task_bn:
                raise ValueError(f"task {task!r} has task-specific BN; bn_mode='frozen' would ignore it")
        if method == "finetune":
            model = self.individual_network(task)
            return model, [{"params": list(model.parameters()), "lr": lr}]
        if method == "classifier":
            if not info.frozen:
                self.freeze_task(task)
        elif info.frozen:
            raise ValueError(f"task {task!r} was already trained and frozen into a mask; add a new task to train again")
        self.set_task(task)
        groups = [{"params": self.task_parameters(task, scores=False), "lr": lr}]
        if method == "piggyback":
            groups.append({"params": self.task_parameters(task, head=False, bn=False),
                           "lr": lr if lr_scores is None else lr_scores, "start_epoch": scores_from})
        return self, groups
