"""A training run's checkpoint: what `piggylab.train.Trainer.fit` needs to continue a run exactly.

A checkpoint is one safetensors file (no pickle), replaced atomically after every epoch
(`piggylab.io`), so a kill at any moment leaves the last complete epoch's. Its tensors:

- ``tensor/<name>``: the run's trained tensors by the model's names (the parameters of the
  optimizer's groups and the running statistics of the batchnorm layers that train);
- ``optimizer/<index>/<key>``: the optimizer's state tensors (Adam's moments, SGD's momentum);
- ``rng/torch``, ``rng/cuda/<device>``, ``rng/generator/<i>``: the random states (torch's CPU
  generator, CUDA's if the run is on a GPU, the train loader's own generators).

Its JSON header (safetensors metadata ``checkpoint``) holds the rest: the run's identity (task,
backbone fingerprint, configuration), the epoch and step counters, the history so far, which
tensor trains in which optimizer group, the optimizer's hyper-parameters and non-tensor state,
the learning-rate scheduler's and the grad scaler's states.

`TrainingState` binds a checkpoint to the live objects of one run: `save` writes them, `load`
refuses a checkpoint made for another run (naming the difference) and restores them. This
module does not train (`piggylab.train`) and is not a task file (`piggylab.storage`: what a
finished task keeps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .io import atomic_write_bytes

FORMAT = "piggylab-checkpoint"
VERSION = 1
FROM_CONFIG = ("milestones", "lr_lambdas")
"""Learning-rate scheduler state that the run's configuration makes (`MultiStepLR`'s milestones,
`LambdaLR`'s functions): not saved, but taken from the scheduler the resumed run makes."""


class CheckpointError(ValueError):
    """A checkpoint that cannot continue this run: unreadable, or made for another one."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands after its last complete epoch."""

    epoch: int
    step: int
    history: list[dict[str, Any]]


IDENTITY_WORDS = {"task": "for task {old!r}, not {new!r}", "backbone": "for backbone {old}, not {new}",
                  "train_batches": "with {old} train batches per epoch, not {new}"}
"""How a difference in each entry of a run's identity reads; others (and each config field) as
"with KEY OLD, not NEW"."""


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's run identity and this run's, each as it reads after
    "checkpoint PATH was made ..." (e.g. "for task 'greek', not 'fonts'", "with lr_scores 0.0002,
    not 0.0001"); values equal in JSON agree."""
    current = json.loads(json.dumps(current))
    pairs = []
    for key in dict.fromkeys([*saved, *current]):
        old, new = saved.get(key), current.get(key)
        if key == "config":
            pairs += [(name, old.get(name), new.get(name)) for name in dict.fromkeys([*old, *new])]
        else:
            pairs.append((key, old, new))
    return [IDENTITY_WORDS.get(key, "with {key} {old!r}, not {new!r}").format(key=key, old=old, new=new)
            for key, old, new in pairs if old != new]


@dataclass
class TrainingState:
    """The live objects of one training run that its checkpoint saves and restores.

    `identity`: what makes a checkpoint this run's (JSON values: task, backbone, config, ...);
    `groups`: per optimizer group, the names of its parameters in `tensors`; `tensors`: every
    trained tensor by name (parameters and moving buffers); `generators`: the train loader's.
    """

    identity: dict[str, Any]
    groups: list[list[str]]
    tensors: dict[str, Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    generators: list[torch.Generator]
    cuda: bool

    def save(self, path: str | Path, progress: Progress) -> Path:
        """Write the run's state after `progress` to `path`, atomically."""
        tensors = {f"tensor/{name}": t.detach().cpu().contiguous() for name, t in self.tensors.items()}
        optimizer = self.optimizer.state_dict()
        state: dict[str, dict[str, Any]] = {}
        for index, entries in optimizer["state"].items():
            state[str(index)] = {}
            for key, value in entries.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
                else:
                    state[str(index)][key] = value
        tensors["rng/torch"] = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if self.cuda else []
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(cuda_states)})
        tensors.update({f"rng/generator/{i}": g.get_state() for i, g in enumerate(self.generators)})
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if k not in FROM_CONFIG}
        header = {
            "format": FORMAT, "version": VERSION, "identity": self.identity,
            "epoch": progress.epoch, "step": progress.step, "history": progress.history, "groups": self.groups,
            "optimizer": {"param_groups": optimizer["param_groups"], "state": state},
            "scheduler": scheduler, "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": {"cuda": len(cuda_states), "generators": len(self.generators)},
        }
        return atomic_write_bytes(path, st_save(tensors, {"checkpoint": json.dumps(header, default=float)}))

    def load(self, path: str | Path) -> Progress:
        """Restore the run from the checkpoint at `path` and return where it stands; a
        `CheckpointError` (the run untouched) if it is unreadable or made for another run."""
        tensors, header = read_checkpoint(path)
        self.check(path, header, tensors)
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                tensor.copy_(tensors[f"tensor/{name}"])
        self.optimizer.load_state_dict(self._optimizer_state(header["optimizer"], tensors))
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **header["scheduler"]})
        if self.scaler is not None and header["scaler"] is not None:
            self.scaler.load_state_dict(header["scaler"])
        torch.set_rng_state(tensors["rng/torch"])
        if self.cuda and header["rng"]["cuda"] == torch.cuda.device_count():  # another device: its own RNG
            torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(header["rng"]["cuda"])])
        for i, generator in enumerate(self.generators):
            generator.set_state(tensors[f"rng/generator/{i}"])
        return Progress(header["epoch"], header["step"], header["history"])

    def check(self, path: str | Path, header: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Refuse a checkpoint made for another run: the first difference found, by name."""
        differences = identity_differences(header["identity"], self.identity)
        if differences:
            raise CheckpointError(f"checkpoint {path} was made {'; '.join(differences)}: it is another run's; "
                                  "resume with its settings, or start afresh (resume=False)")
        if header["groups"] != self.groups:
            saved, now = {n for g in header["groups"] for n in g}, {n for g in self.groups for n in g}
            example = f"e.g. {sorted(saved ^ now)[0]}" if saved ^ now else "the same ones, grouped or ordered otherwise"
            raise CheckpointError(f"checkpoint {path} trains other tensors than this run: {len(saved - now)} only "
                                  f"in the checkpoint, {len(now - saved)} only in this run ({example})")
        for name, tensor in self.tensors.items():
            saved = tensors.get(f"tensor/{name}")
            if saved is None or saved.shape != tensor.shape:
                got = "nothing" if saved is None else f"shape {tuple(saved.shape)}"
                raise CheckpointError(f"checkpoint {path} holds {got} for {name}, this run trains shape "
                                      f"{tuple(tensor.shape)}")
        if header["rng"]["generators"] != len(self.generators):
            raise CheckpointError(f"checkpoint {path} was made with a train loader of {header['rng']['generators']} "
                                  f"random generator(s), this one has {len(self.generators)}")

    def _optimizer_state(self, saved: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
        """The optimizer's state dict from the checkpoint; state tensors shaped like their
        parameter are laid out like it (channels-last weights keep channels-last moments)."""
        params = [self.tensors[name] for group in self.groups for name in group]
        state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in saved["state"].items()}
        for key, tensor in tensors.items():
            if key.startswith("optimizer/"):
                _, index, entry = key.split("/", 2)
                param = params[int(index)]
                if tensor.shape == param.shape:
                    tensor = torch.empty_like(param, dtype=tensor.dtype).copy_(tensor)
                state[int(index)][entry] = tensor
        return {"state": state, "param_groups": saved["param_groups"]}


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the JSON header of the checkpoint at `path` (`CheckpointError` if it is not one)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        header = json.loads(metadata.get("checkpoint", "{}"))
    except (OSError, SafetensorError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): {error}") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a training checkpoint ({FORMAT} version {VERSION})")
    return tensors, header
