"""The cost of Piggyback, measured: training time and memory, storage, task switching, inference.

``python -m piggylab.bench`` measures, each figure against its baseline in the same process
(memory: in fresh subprocesses, one per measurement):

1. `train_step`: one training step (forward, backward, Adam step) of piggyback (scores and
   head) and of classifier-only (head of a frozen all-ones task) against fine-tuning (the
   task's `individual_network`, every weight and BN trained), same model, batch and Adam.
2. `train_memory`: peak memory of a few such steps, same three methods (CPU: peak RSS above
   the process's footprint before the model is built, with glibc returning freed blocks;
   CUDA: `torch.cuda.max_memory_allocated` above the same point).
3. `storage`: bytes and bits per masked weight of a task file, packed and entropy coded,
   against a float32 fine-tuned checkpoint, for masks with a given fraction of zeros.
4. `task_switch`: `net.set_task` between two frozen tasks (merged weights recomputed), per
   fraction of zeros in their masks, against one copy of all masked weights as one flat
   tensor, the memory-bandwidth floor (and, for reference, a copy layer by layer).
5. `inference`: throughput of a frozen task (merged weights) and of a task still holding
   scores (masked on the fly) against the plain backbone, in eval mode.
6. `tasks`: many tasks on one backbone. The bytes each frozen task adds to a network (its
   tensors and the process's resident set, in a fresh subprocess) against one bit per masked
   weight; and a batch mixing tasks: `predict` against the tasks called one by one.

Every timed figure is the median of interleaved repetitions after warm-up, with its
quartiles; ratios are taken per repetition. `--quick` runs the tiny backbone only, with few
repetitions (the smoke test of `make test`); `--json FILE` writes every number. This module
measures; it changes nothing in the network it times and asserts nothing about the results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .backbones import tiny_resnet
from .io import atomic_write_text
from .piggyback import PiggybackNet
from .tasks import MultiTaskNet
from .storage import FORMATS, mask_bits_per_weight, save_task
from .train import make_optimizer

METHODS = ("finetune", "piggyback", "classifier")
"""Training methods timed against each other; the first is the baseline."""

TARGETS = {
    "train_step": {"cpu": 1.10, "cuda": 1.05},  # piggyback / finetune, at most
    "train_memory": 1.10,                       # piggyback / finetune, at most
    "packed_bits_per_weight": 1.0,              # exactly, up to one padding byte per layer
    "rice_bits_per_weight": 0.5,                # below, for masks with at most 10% zeros
    "task_switch": 2.0,                         # set_task / plain copy, at most
    "inference_merged": 0.98,                   # merged / plain throughput, at least
    "frozen_task_bytes": 1.10,                  # memory per frozen task / (masked weights / 8), at most
}

NUM_CLASSES = 10


@dataclass(frozen=True)
class Workload:
    """A backbone at an input size with a batch size: what one training or inference step runs."""

    backbone: str
    image_size: int
    batch_size: int = 32


@dataclass(frozen=True)
class Plan:
    """What one run measures, and how many times."""

    workloads: dict[str, tuple[Workload, ...]]  # per device type
    switch_backbone: str
    switch_zero_fractions: tuple[float, ...]
    storage_backbones: tuple[str, ...]
    zero_fractions: tuple[float, ...]
    warmup: int
    reps: int
    memory_reps: int
    memory_steps: int
    inference_batches: int
    tasks_backbone: str           # `tasks`: memory per frozen task, on this backbone
    frozen_tasks: int             # ... with this many frozen tasks
    tasks_zero_fraction: float    # ... of random masks with this fraction of zeros
    mixed: Workload               # `tasks`: a batch mixing tasks
    mixed_tasks: int              # ... how many


FULL = Plan(
    workloads={"cpu": (Workload("tiny", 32), Workload("resnet18", 64)),
               "cuda": (Workload("tiny", 32), Workload("resnet18", 64), Workload("resnet50", 224),
                        Workload("resnet50", 224, 128))},  # batch 32 leaves an H100 waiting on Python
    switch_backbone="resnet50", switch_zero_fractions=(0.01, 0.05, 0.10, 0.30),
    storage_backbones=("tiny", "resnet50"), zero_fractions=(0.0, 0.01, 0.05, 0.10),
    warmup=3, reps=25, memory_reps=3, memory_steps=3, inference_batches=1,
    tasks_backbone="resnet50", frozen_tasks=20, tasks_zero_fraction=0.05, mixed=Workload("resnet50", 64, 32),
    mixed_tasks=4,
)
QUICK = Plan(
    workloads={"cpu": (Workload("tiny", 32, 8),), "cuda": (Workload("tiny", 32, 8),)},
    switch_backbone="tiny", switch_zero_fractions=(0.05,), storage_backbones=("tiny",), zero_fractions=(0.0, 0.10),
    warmup=1, reps=3, memory_reps=1, memory_steps=2, inference_batches=1,
    tasks_backbone="tiny", frozen_tasks=20, tasks_zero_fraction=0.05, mixed=Workload("tiny", 32, 8), mixed_tasks=2,
)


# -- helpers ---------------------------------------------------------------------------
def summary(values: list[float]) -> dict[str, float]:
    """Median and quartiles (interquartile range as spread) of repeated measurements."""
    values = sorted(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)}


def build_backbone(name: str, image_size: int = 32) -> nn.Module:
    """A randomly initialised backbone whose batchnorm statistics are those of its own
    activations on random images of `image_size`, as in a pretrained network.

    Step times do not depend on the weights' values, but they do on exact zeros: with the
    initial statistics (mean 0, variance 1) whole channels of a deep random network stay at
    zero behind a frozen BN, many score gradients are then exactly 0, and Adam's ``sqrt`` of
    zeros is slow on some CPUs (benchmarks/RESULTS.md, "Figures moved out of the code").
    """
    torch.manual_seed(0)
    model = tiny_resnet(num_classes=NUM_CLASSES) if name == "tiny" else \
        torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in batchnorms:
        bn.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, image_size, image_size))
    for bn in batchnorms:
        bn.momentum = 0.1
    return model


def build_net(backbone: str, device: torch.device, tasks: tuple[str, ...] = ("cls", "pb"),
              image_size: int = 32) -> PiggybackNet:
    """The backbone as a PiggybackNet on `device` with, of `tasks`, a frozen all-ones task
    `cls` (the classifier-only baseline) and a task in training `pb` (scores, active)."""
    net = PiggybackNet(build_backbone(backbone, image_size), backbone_name=backbone).to(device)
    for task in tasks:
        net.add_task(task, NUM_CLASSES)
    if "cls" in tasks:
        net.freeze_task("cls")
    return net


def batch(workload: Workload, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(workload.batch_size, 3, workload.image_size, workload.image_size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (workload.batch_size,), generator=g)
    return x.to(device), y.to(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA as the trainer uses it; full precision on CPU (as the trainer)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_setup(net: PiggybackNet, method: str) -> tuple[nn.Module, torch.optim.Optimizer, str | None]:
    """(model, Adam optimizer as the lab makes it, task to activate) of one method on `net`."""
    if method == "finetune":
        model = net.individual_network("pb").train()
        return model, make_optimizer("adam", model.parameters(), lr=1e-4), None
    task = "cls" if method == "classifier" else "pb"
    return net.train(), make_optimizer("adam", net.task_parameters(task), lr=1e-4), task


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, device: torch.device) -> None:
    """One step in the order of `piggylab.train.Trainer.fit`."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


Case = tuple[Callable[[], None], Callable[[], None]]
"""(prepare, run): `prepare` is not timed (e.g. making a task active), `run` is."""


def interleaved(cases: dict[str, Case], device: torch.device, warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds per repetition of each case; every repetition runs all cases, in an order
    rotated from one repetition to the next, so slow phases of a noisy machine hit all."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            prepare, run = cases[name]
            prepare()
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per case, the summary of its per-repetition time ratio to the baseline's."""
    return {name: summary([a / b for a, b in zip(values, times[baseline])])
            for name, values in times.items() if name != baseline}


def no_op() -> None:
    return None


# -- 1. training step time ----------------------------------------------------------------
def bench_train_step(workload: Workload, device: torch.device, plan: Plan) -> dict:
    net = build_net(workload.backbone, device, image_size=workload.image_size)
    x, y = batch(workload, device)
    cases: dict[str, Case] = {}
    for method in METHODS:
        model, optimizer, task = training_setup(net, method)
        model.to(device)
        prepare = (lambda task=task: net.set_task(task)) if task else no_op
        cases[method] = (prepare, lambda m=model, o=optimizer: train_step(m, o, x, y, device))
    times = interleaved(cases, device, plan.warmup, plan.reps)
    ratio = ratios(times, "finetune")
    return {**asdict(workload), "device": device.type, "amp": "bf16" if device.type == "cuda" else "none",
            "optimizer": "adam", "ms": {m: summary([1e3 * t for t in v]) for m, v in times.items()},
            "ratio_to_finetune": ratio, "target": TARGETS["train_step"][device.type],
            "met": ratio["piggyback"]["median"] <= TARGETS["train_step"][device.type]}


# -- 2. peak training memory ----------------------------------------------------------------
def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_memory(device: torch.device) -> int:
    """Start a new peak-memory window; return the bytes in use now (the window's floor).

    CUDA: the caching allocator's statistics. CPU (Linux only): the kernel's resident-set
    high-water mark, reset through /proc/self/clear_refs.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("measuring peak CPU memory needs Linux (/proc/self/clear_refs)")
    Path("/proc/self/clear_refs").write_text("5")  # a procfs control, not a file on disk: nothing to write atomically
    return _proc_status_bytes("VmRSS")


def peak_memory(device: torch.device) -> int:
    """The peak bytes in use since `reset_peak_memory`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_bytes("VmHWM")


def memory_probe(workload: Workload, method: str, device: torch.device, steps: int) -> int:
    """Bytes of peak memory that `steps` training steps of `method` add to the process.

    Runs in a fresh process (see `measure_memory`): the floor is taken once the batch exists
    and before any model does, so the figure holds the model, its gradients, the optimizer
    state, the activations and every temporary, and not the libraries.
    """
    x, y = batch(workload, device)
    floor = reset_peak_memory(device)
    net = build_net(workload.backbone, device, ("cls",) if method == "classifier" else ("pb",), workload.image_size)
    model, optimizer, task = training_setup(net, method)
    if task is None:
        del net
        gc.collect()
    else:
        net.set_task(task)
    model.to(device)
    for _ in range(steps):
        train_step(model, optimizer, x, y, device)
    return peak_memory(device) - floor


def _train_memory_probe(workload: dict, method: str, device: str, steps: int) -> int:
    """`memory_probe` with JSON arguments (`in_fresh_process`)."""
    return memory_probe(Workload(**workload), method, torch.device(device), steps)


def _probe_main(spec: str) -> None:
    """Entry point of `in_fresh_process`: print the probe's result as JSON."""
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    print(json.dumps(PROBES[args["probe"]](**args["kwargs"])))


def in_fresh_process(probe: str, **kwargs):
    """``PROBES[probe](**kwargs)`` (JSON in, JSON out) in a fresh Python process, so peaks and
    allocations of earlier measurements don't count.

    On CPU, glibc is told to serve every block over 64 KiB by mmap, so freed tensors leave
    the resident set at once and RSS follows the live tensors rather than the heap's
    high-water mark (without it, freed blocks stay resident and blur the comparison).
    """
    spec = json.dumps({"probe": probe, "kwargs": kwargs, "threads": torch.get_num_threads()})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = "import sys; from piggylab.bench import _probe_main; _probe_main(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"probe {probe} {kwargs} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(workload: Workload, method: str, device: torch.device, steps: int) -> int:
    """`memory_probe` in a fresh Python process (`in_fresh_process`)."""
    return int(in_fresh_process("train_memory", workload=asdict(workload), method=method, device=str(device),
                                steps=steps))


def bench_train_memory(workload: Workload, device: torch.device, plan: Plan) -> dict:
    sizes: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(plan.memory_reps):
        for method in METHODS:
            sizes[method].append(float(measure_memory(workload, method, device, plan.memory_steps)))
    ratio = ratios(sizes, "finetune")
    measure = "max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM, mmap threshold 64 KiB)"
    return {**asdict(workload), "device": device.type, "measure": measure, "steps": plan.memory_steps,
            "mib": {m: summary([v / 2**20 for v in values]) for m, values in sizes.items()},
            "ratio_to_finetune": ratio, "target": TARGETS["train_memory"],
            "met": ratio["piggyback"]["median"] <= TARGETS["train_memory"]}


# -- 3. storage per task --------------------------------------------------------------------
def random_masks(net: PiggybackNet, zero_fraction: float, seed: int = 0) -> dict[str, Tensor]:
    """Independent random masks with the given fraction of zeros: for a given fraction, the
    hardest case for the entropy coder (real masks cluster their zeros)."""
    g = torch.Generator().manual_seed(seed)
    return {layer: torch.rand(net.original_weight(layer).shape, generator=g) >= zero_fraction for layer in net.masked_layers}


def bench_storage(backbone: str, plan: Plan) -> list[dict]:
    net = build_net(backbone, torch.device("cpu"))
    finetuned = len(st_save({k: v.contiguous() for k, v in net.individual_network("cls").state_dict().items()}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for zeros in plan.zero_fractions:
            net.set_masks("cls", random_masks(net, zeros))
            row = {"backbone": backbone, "masked_weights": net.num_masked_weights, "masked_layers": len(net.masked_layers),
                   "zero_fraction": zeros, "finetuned_bytes": finetuned}
            for fmt in FORMATS:
                path = save_task(net, "cls", Path(tmp) / f"{fmt}.safetensors", fmt)
                row[f"{fmt}_file_bytes"] = path.stat().st_size
                row[f"{fmt}_bits_per_weight"] = mask_bits_per_weight(path)
                row[f"{fmt}_vs_finetuned"] = path.stat().st_size / finetuned
            row["packed_padding_bits"] = row["packed_bits_per_weight"] * net.num_masked_weights - net.num_masked_weights
            row["met"] = (0 <= row["packed_padding_bits"] < 8 * len(net.masked_layers)
                          and (zeros > 0.10 or row["rice_bits_per_weight"] < TARGETS["rice_bits_per_weight"]))
            rows.append(row)
    return rows


# -- 4. task switching ------------------------------------------------------------------------
def bench_task_switch(backbone: str, device: torch.device, plan: Plan) -> list[dict]:
    """Per fraction of zeros, `set_task` from one frozen task to another with random masks of
    that fraction, against one copy of all the masked weights as one flat tensor (the
    bandwidth floor) and, for reference, one copy layer by layer."""
    def task_name(zeros: float, seed: int) -> str:
        return f"z{zeros:g}_{seed}".replace(".", "_")

    net = build_net(backbone, device, tasks=())
    for zeros in plan.switch_zero_fractions:
        for seed in (1, 2):
            task = task_name(zeros, seed)
            net.add_task(task, NUM_CLASSES)
            net.set_masks(task, random_masks(net, zeros, seed=seed))
            net.set_task(task)  # the first switch to a task makes its masks one flat tensor
    originals = [net.original_weight(layer) for layer in net.masked_layers]
    flat = torch.cat([w.reshape(-1) for w in originals])
    flat_copy, copies = torch.empty_like(flat), [torch.empty_like(w) for w in originals]

    def layer_copy() -> None:
        for dst, src in zip(copies, originals):
            dst.copy_(src)

    cases: dict[str, Case] = {"copy": (no_op, lambda: flat_copy.copy_(flat)), "layer_copy": (no_op, layer_copy)}
    for zeros in plan.switch_zero_fractions:
        first, second = (task_name(zeros, seed) for seed in (1, 2))
        cases[f"{zeros:g}"] = (lambda a=first: net.set_task(a), lambda b=second: net.set_task(b))
    times = interleaved(cases, device, plan.warmup, plan.reps)
    ratio = ratios(times, "copy")
    nbytes = flat.numel() * flat.element_size()
    ms = {k: summary([1e3 * t for t in v]) for k, v in times.items()}
    return [{"backbone": backbone, "device": device.type, "weight_bytes": nbytes, "zero_fraction": zeros,
             "ms": {"copy": ms["copy"], "layer_copy": ms["layer_copy"], "set_task": ms[f"{zeros:g}"]},
             "copy_gb_per_s": 2 * nbytes / statistics.median(times["copy"]) / 1e9,
             "ratio_to_copy": ratio[f"{zeros:g}"], "target": TARGETS["task_switch"],
             "met": ratio[f"{zeros:g}"]["median"] <= TARGETS["task_switch"]} for zeros in plan.switch_zero_fractions]


# -- 5. inference -----------------------------------------------------------------------------
def bench_inference(workload: Workload, device: torch.device, plan: Plan) -> dict:
    plain = build_backbone(workload.backbone, workload.image_size).to(device).eval()
    net = build_net(workload.backbone, device, image_size=workload.image_size).eval()
    x, _ = batch(workload, device)

    def infer(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), autocast(device):
                for _ in range(plan.inference_batches):
                    model(x)
        return run

    def steady(model: nn.Module, task: str | None = None) -> Case:
        """Throughput is a steady state: `prepare` makes the task active and runs one untimed
        pass, so the timed pass follows one of its own kind, not what the case before it left
        in the allocator and caches (a pass's time depends on the pass before it, whatever it
        computes: benchmarks/RESULTS.md, "Figures moved out of the code")."""
        run = infer(model)

        def prepare() -> None:
            if task is not None:
                net.set_task(task)
            run()
        return prepare, run

    times = interleaved({"plain": steady(plain), "merged": steady(net, "cls"), "unmerged": steady(net, "pb")},
                        device, plan.warmup, plan.reps)
    images = workload.batch_size * plan.inference_batches
    # throughput ratio = time ratio inverted: plain time over the case's, per repetition
    throughput = {name: summary([b / a for a, b in zip(values, times["plain"])])
                  for name, values in times.items() if name != "plain"}
    return {**asdict(workload), "device": device.type,
            "images_per_s": {k: summary([images / t for t in v]) for k, v in times.items()},
            "throughput_ratio_to_plain": throughput, "target": TARGETS["inference_merged"],
            "met": throughput["merged"]["median"] >= TARGETS["inference_merged"]}


# -- 6. many tasks ---------------------------------------------------------------------------
def _held_tensor_bytes(module: nn.Module) -> int:
    """Bytes of every distinct storage behind `module`'s parameters and buffers."""
    storages = {}
    for tensor in (*module.parameters(), *module.buffers()):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _settled_rss() -> int:
    """Resident bytes of this process once garbage is collected and glibc has given back
    the free memory at the top of its heap (`malloc_trim`, where there is one)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _proc_status_bytes("VmRSS")


def frozen_tasks_probe(backbone: str, tasks: int, zero_fraction: float) -> dict:
    """Bytes that `tasks` frozen tasks (random masks with `zero_fraction` zeros, added as a
    task file adds them: straight into their packed form) add to a network over `backbone`
    that already serves one frozen task (so its merged weights exist before): measured as
    the tensors the network holds and as the process's resident set (Linux). Runs in a
    fresh process (`in_fresh_process`)."""
    net = build_net(backbone, torch.device("cpu"), tasks=())
    net.add_task("first", NUM_CLASSES, masks=random_masks(net, zero_fraction, seed=0))
    before_tensors, before_rss = _held_tensor_bytes(net), _settled_rss()
    for i in range(1, tasks + 1):
        net.add_task(f"t{i}", NUM_CLASSES, masks=random_masks(net, zero_fraction, seed=i), activate=False)
    tensors, rss = _held_tensor_bytes(net) - before_tensors, _settled_rss() - before_rss
    packed = sum(mask.numel() for layer, mask in net.packed_masks("t1").items())
    head = sum(p.numel() * p.element_size() for p in net.heads.heads["t1"].parameters())
    return {"masked_weights": net.num_masked_weights, "masked_layers": len(net.masked_layers),
            "packed_bytes": packed, "head_bytes": head, "tensor_bytes": tensors / tasks, "rss_bytes": rss / tasks}


def bench_frozen_tasks(plan: Plan) -> dict:
    """Memory per frozen task (`frozen_tasks_probe`, in a fresh process) against the 1 bit per
    masked weight the paper promises, and against a byte per weight."""
    row = in_fresh_process("frozen_tasks", backbone=plan.tasks_backbone, tasks=plan.frozen_tasks,
                           zero_fraction=plan.tasks_zero_fraction)
    ideal = row["masked_weights"] / 8
    ratio = {key: row[f"{key}_bytes"] / ideal for key in ("tensor", "rss")}
    return {"backbone": plan.tasks_backbone, "frozen_tasks": plan.frozen_tasks,
            "zero_fraction": plan.tasks_zero_fraction, **row, "one_bit_bytes": ideal,
            "byte_per_weight_bytes": row["masked_weights"], "ratio_to_one_bit": ratio,
            "target": TARGETS["frozen_task_bytes"], "met": max(ratio.values()) <= TARGETS["frozen_task_bytes"]}


def mixed_batch_speed(net: MultiTaskNet, x: Tensor, tasks: Sequence[str], device: torch.device, warmup: int,
                      reps: int) -> dict:
    """Images per second serving the batch `x` whose sample i belongs to ``tasks[i]`` (give
    `net` in eval mode): `predict` (grouped by task, each sample exactly as alone) against the
    tasks called one by one, a switch and a pass per sample (``set_task(t); net(x[i:i + 1])``,
    the switch skipped when the task is already active), and, for reference, grouped without
    the exactness (``set_task(t); net(x[group])``); and each one's speed-up over one by one."""
    x = x.to(device)

    def one_by_one() -> None:
        with torch.inference_mode():
            for i, name in enumerate(tasks):
                if net.active_task != name:
                    net.set_task(name)
                net(x[i : i + 1])

    groups: dict[str, list[int]] = {}
    for i, name in enumerate(tasks):
        groups.setdefault(name, []).append(i)

    def grouped_inexact() -> None:
        with torch.inference_mode():
            for name, index in groups.items():
                net.set_task(name)
                net(x[index])

    def predict() -> None:
        with torch.inference_mode():
            net.predict(x, tasks)

    times = interleaved({"one_by_one": (no_op, one_by_one), "predict": (no_op, predict),
                         "grouped_inexact": (no_op, grouped_inexact)}, device, warmup, reps)
    speedup = {name: summary([b / a for a, b in zip(values, times["one_by_one"])])
               for name, values in times.items() if name != "one_by_one"}
    return {"images_per_s": {k: summary([len(x) / t for t in v]) for k, v in times.items()},
            "speedup_over_one_by_one": speedup}


def bench_mixed_batch(workload: Workload, tasks: int, device: torch.device, plan: Plan) -> dict:
    """A batch whose samples belong to `tasks` frozen tasks (drawn at random), served by
    `predict` and one by one (`mixed_batch_speed`), in eval mode."""
    net = build_net(workload.backbone, device, tasks=(), image_size=workload.image_size).eval()
    names = [f"m{i}" for i in range(tasks)]
    for i, name in enumerate(names):
        net.add_task(name, NUM_CLASSES, masks=random_masks(net, 0.05, seed=i))
    x, _ = batch(workload, device)
    g = torch.Generator().manual_seed(1)
    chosen = [names[i] for i in torch.randint(0, tasks, (workload.batch_size,), generator=g).tolist()]
    return {**asdict(workload), "device": device.type, "tasks": tasks,
            **mixed_batch_speed(net, x, chosen, device, plan.warmup, plan.reps)}


PROBES: dict[str, Callable] = {"train_memory": _train_memory_probe, "frozen_tasks": frozen_tasks_probe}
"""What `in_fresh_process` can run."""


# -- the run ------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"date": dt.date.today().isoformat(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def run(plan: Plan, devices: list[torch.device], sections: tuple[str, ...]) -> dict:
    torch.set_num_threads(machine()["cpu_count"])
    result: dict = {"machine": machine(), "plan": {k: v for k, v in asdict(plan).items() if k != "workloads"},
                    "targets": TARGETS}
    jobs: dict[str, Callable[[], list[dict]]] = {
        "train_step": lambda: [bench_train_step(w, d, plan) for d in devices for w in plan.workloads[d.type]],
        "train_memory": lambda: [bench_train_memory(w, d, plan) for d in devices for w in plan.workloads[d.type]],
        "storage": lambda: [row for b in plan.storage_backbones for row in bench_storage(b, plan)],
        "task_switch": lambda: [row for d in devices for row in bench_task_switch(plan.switch_backbone, d, plan)],
        "inference": lambda: [bench_inference(w, d, plan) for d in devices for w in plan.workloads[d.type]],
        "tasks": lambda: [{"memory": bench_frozen_tasks(plan),
                           "mixed_batch": [bench_mixed_batch(plan.mixed, plan.mixed_tasks, d, plan) for d in devices]}],
    }
    for section in sections:
        start = time.perf_counter()
        result[section] = jobs[section]()
        print(f"[bench] {section}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}, {s['q3']:.{digits}f}]"


_MET = {True: "yes", False: "**no**"}


def _table(title: str, header: list[str], rows: list[list]) -> list[str]:
    """A titled markdown table, with a blank line after the title and after the table."""
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(map(str, cells)) + " |" for cells in rows), ""]


def _method_table(title: str, rows: list[dict], key: str, digits: int) -> list[str]:
    """A markdown table of one figure per training method and its ratio to fine-tuning."""
    others = [m for m in METHODS if m != "finetune"]
    header = ["device", "backbone", "size", "batch", *METHODS, *(f"{m} / finetune" for m in others), "met"]
    return _table(title, header, [[r["device"], r["backbone"], r["image_size"], r["batch_size"],
                                   *(_fmt(r[key][m], digits) for m in METHODS),
                                   *(_fmt(r["ratio_to_finetune"][m]) for m in others), _MET[r["met"]]] for r in rows])


def report(result: dict) -> str:
    """Markdown tables of a run's results (median [quartiles]), as RESULTS.md shows them."""
    m = result["machine"]
    lines = [f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads)"
             + (f", {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}; {m['date']}.", ""]
    if "train_step" in result:
        lines += _method_table("Training step (ms; ratio to fine-tuning, target piggyback <= 1.10 CPU / 1.05 GPU):",
                               result["train_step"], "ms", 1)
    if "train_memory" in result:
        lines += _method_table("Peak training memory (MiB above the pre-model floor; target piggyback <= 1.10x fine-tuning):",
                               result["train_memory"], "mib", 1)
    if "storage" in result:
        lines += _table(
            "Storage per task (random masks; mask bits per masked weight; file bytes include head and metadata):",
            ["backbone", "masked weights", "zeros", "packed bits/w", "rice bits/w", "packed file", "rice file",
             "fine-tuned file", "packed / fine-tuned", "met"],
            [[r["backbone"], f"{r['masked_weights']:,}", f"{r['zero_fraction']:.0%}", f"{r['packed_bits_per_weight']:.6f}",
              f"{r['rice_bits_per_weight']:.3f}", f"{r['packed_file_bytes']:,}", f"{r['rice_file_bytes']:,}",
              f"{r['finetuned_bytes']:,}", f"{r['packed_vs_finetuned']:.4f}", _MET[r["met"]]] for r in result["storage"]])
    if "task_switch" in result:
        lines += _table(
            "Task switching (`set_task` between two frozen tasks vs one flat copy of the masked weights; target <= 2x):",
            ["device", "backbone", "weight MB", "zeros", "copy ms", "per-layer copy ms", "set_task ms", "set_task / copy",
             "copy GB/s (r+w)", "met"],
            [[r["device"], r["backbone"], f"{r['weight_bytes'] / 1e6:.1f}", f"{r['zero_fraction']:.0%}",
              _fmt(r["ms"]["copy"], 3), _fmt(r["ms"]["layer_copy"], 3), _fmt(r["ms"]["set_task"], 3),
              _fmt(r["ratio_to_copy"]), f"{r['copy_gb_per_s']:.1f}", _MET[r["met"]]] for r in result["task_switch"]])
    if "inference" in result:
        lines += _table(
            "Inference (images/s; throughput ratio to the plain backbone, target merged >= 0.98):",
            ["device", "backbone", "size", "batch", "plain", "merged", "unmerged", "merged / plain", "unmerged / plain", "met"],
            [[r["device"], r["backbone"], r["image_size"], r["batch_size"], *(_fmt(r["images_per_s"][k], 0) for k in
              ("plain", "merged", "unmerged")), _fmt(r["throughput_ratio_to_plain"]["merged"]),
              _fmt(r["throughput_ratio_to_plain"]["unmerged"]), _MET[r["met"]]] for r in result["inference"]])
    if "tasks" in result:
        for r in result["tasks"]:
            m = r["memory"]
            lines += _table(
                f"Memory per frozen task ({m['frozen_tasks']} frozen tasks added, random masks with "
                f"{m['zero_fraction']:.0%} zeros; bytes per task; target <= 1.10x one bit per masked weight):",
                ["backbone", "masked weights", "1 bit/weight", "packed masks", "head", "tensors", "RSS",
                 "tensors / 1 bit", "RSS / 1 bit", "a byte per weight", "met"],
                [[m["backbone"], f"{m['masked_weights']:,}", f"{m['one_bit_bytes']:,.0f}", f"{m['packed_bytes']:,}",
                  f"{m['head_bytes']:,}", f"{m['tensor_bytes']:,.0f}", f"{m['rss_bytes']:,.0f}",
                  f"{m['ratio_to_one_bit']['tensor']:.3f}", f"{m['ratio_to_one_bit']['rss']:.3f}",
                  f"{m['byte_per_weight_bytes']:,}", _MET[m["met"]]]])
            lines += _table(
                "Mixed-task batch (images/s; `predict`: grouped by task, each sample exactly as alone; one by one: "
                "a switch and a pass per sample; grouped, inexact: `net(x[group])` per task):",
                ["device", "backbone", "size", "batch", "tasks", "one by one", "predict", "grouped, inexact",
                 "predict / one by one", "grouped inexact / one by one"],
                [[b["device"], b["backbone"], b["image_size"], b["batch_size"], b["tasks"],
                  *(_fmt(b["images_per_s"][k], 0) for k in ("one_by_one", "predict", "grouped_inexact")),
                  _fmt(b["speedup_over_one_by_one"]["predict"]), _fmt(b["speedup_over_one_by_one"]["grouped_inexact"])]
                 for b in r["mixed_batch"]])
    return "\n".join(lines)


SECTIONS = ("train_step", "train_memory", "storage", "task_switch", "inference", "tasks")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m piggylab.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny backbone, few repetitions: a smoke test")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU and, when there is one, the GPU")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--reps", type=int, help="timed repetitions (default: 25, quick: 3)")
    parser.add_argument("--memory-reps", type=int, help="fresh processes per memory figure (default: 3, quick: 1)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(plan, reps=args.reps or plan.reps, memory_reps=args.memory_reps or plan.memory_reps)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    devices = [torch.device(d) for d in (("cpu", "cuda") if args.device == "all" else (args.device,))
               if d == "cpu" or torch.cuda.is_available()]
    result = run(plan, devices, tuple(args.sections))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
