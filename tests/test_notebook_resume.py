"""Nothing lost, notebook side: `pl.Lab` checkpoints every run in ``output_dir/checkpoints``, one
file per run (named by the run cache's key), removed once the run is done; a killed
``piggylab batch`` run again resumes the unfinished run from its last complete epoch."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import synthetic_loader
from test_checkpoints import Stop, stop_at

import piggylab as pl
from piggylab import experiments
from piggylab.cache import RunCache, code_version
from piggylab.checkpoints import read_checkpoint
from piggylab.notebook import PARAMETER_RULES
from piggylab.report import read_metrics

REPO = Path(__file__).resolve().parent.parent


class Data:
    """A task's identity for the run key; its images come from `loaders`."""

    name, num_classes, classes, origin = "toy", 3, ["a", "b", "c"], {"synthetic": "toy"}

    def sizes(self) -> dict[str, int]:
        return {"train": 128, "val": 128, "test": 128}


def loaders():
    return synthetic_loader(1), synthetic_loader(2), synthetic_loader(3)


def backbone(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1)


def spec(method: str = "piggyback", **overrides) -> experiments.RunSpec:
    return experiments.RunSpec(experiments.train_config(method, epochs=2, device="cpu", **overrides))


def test_each_run_keeps_its_own_checkpoint_until_it_is_done(tmp_path):
    runs = {"pretrained": (backbone(0), spec()), "random": (backbone(1), spec()),  # one task, two backbones
            "other seed": (backbone(0), spec(seed=1)), "classifier": (backbone(0), spec("classifier"))}
    for net_backbone, run_spec in runs.values():
        with pytest.raises(Stop):  # a run that fails in its second epoch
            experiments.run(pl.PiggybackNet(net_backbone), Data(), run_spec, loaders=loaders(),
                            checkpoint_dir=tmp_path, callbacks=stop_at(6))
    checkpoints = sorted(tmp_path.glob("*.ckpt"))
    assert len(checkpoints) == len(runs)  # never one file for two runs
    assert all(read_checkpoint(c)[1]["epoch"] == 1 for c in checkpoints)

    cache = RunCache(tmp_path / "cache")
    net_backbone, run_spec = runs["random"]
    done = experiments.run(pl.PiggybackNet(net_backbone), Data(), run_spec, loaders=loaders(),
                           checkpoint_dir=tmp_path, cache=cache)
    assert done.row["resumed_epoch"] == 1 and done.row["status"] == "done"
    assert len(list(tmp_path.glob("*.ckpt"))) == len(runs) - 1  # its own checkpoint is gone, the others stay
    assert len(list(cache.folder.glob("*/row.json"))) == 1  # stored in the cache

    net_backbone, run_spec = runs["pretrained"]
    stopped = experiments.run(pl.PiggybackNet(net_backbone), Data(), run_spec, loaders=loaders(),
                              checkpoint_dir=tmp_path, callbacks={"on_step_end": lambda trainer, _: trainer.stop()})
    assert stopped.row["status"] == "stopped" and len(list(tmp_path.glob("*.ckpt"))) == len(runs) - 1


def test_the_lab_checkpoints_into_output_dir(tmp_path):
    lab = pl.Lab("toy", {**{name: None for name in PARAMETER_RULES}, "backbone": "tiny",
                         "recipe": "embedded", "device": "cpu", "seed": 0, "smoke": True,
                         "output_dir": str(tmp_path / "out")})
    with pytest.raises(Stop):
        lab.run(pl.PiggybackNet(backbone(0)), Data(), spec(), loaders=loaders(), callbacks=stop_at(6))
    [checkpoint] = (tmp_path / "out" / "checkpoints").glob("*.ckpt")
    result = lab.run(pl.PiggybackNet(backbone(0)), Data(), spec(), loaders=loaders())
    assert result.row["resumed_epoch"] == 1 and not checkpoint.exists()


PAUSE_AFTER_A_CHECKPOINT = """
    # A test's hook for the kernels of one batch (JPY_PARENT_PID: a Jupyter kernel): after writing
    # a run's first checkpoint, the kernel waits there to be killed.
    import os
    if "JPY_PARENT_PID" in os.environ:
        import time
        from piggylab.checkpoints import TrainingState

        save = TrainingState.save

        def save_then_wait(self, path, progress):
            written = save(self, path, progress)
            time.sleep(600)
            return written

        TrainingState.save = save_then_wait
"""


def _batch(grid: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "piggylab.cli", "batch", str(grid), "--scheduler", "local-threads"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the batch and every process it started (its notebook's kernel), as a crash would."""
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        member.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=60)
    process.communicate()


@pytest.mark.slow
def test_a_killed_batch_resumes_the_unfinished_run_from_its_last_epoch(tmp_path):
    output = tmp_path / "out"
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "output": str(output), "notebooks_dir": str(REPO / "notebooks"),
        "runs": [{"notebook": "01_quickstart", "parameters": {"data_scale": 0.01, "epochs": 2, "device": "cpu"}}]}))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(PAUSE_AFTER_A_CHECKPOINT))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    version = code_version()

    first = _batch(grid, {**env, "PYTHONPATH": os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])})
    deadline = time.monotonic() + 300
    while not list(output.glob("runs/*/checkpoints/*.ckpt")):
        assert first.poll() is None, f"the batch ended before a checkpoint was written:\n{first.communicate()[1]}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.1)
    _kill_tree(first)
    [checkpoint] = output.glob("runs/*/checkpoints/*.ckpt")
    _, header = read_checkpoint(checkpoint)
    assert (header["epoch"], header["identity"]["config"]["epochs"]) == (1, 2)  # killed mid-run
    run_dir = checkpoint.parent.parent
    assert not (run_dir / "metrics.json").exists()

    second = _batch(grid, env)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert f"taking over {output}: its lock was left by the batch of process {first.pid}" in err
    rows = {row["name"]: row for row in read_metrics(run_dir / "metrics.json")["results"]}
    resumed = rows[header["identity"]["task"]]
    if resumed["resumed_epoch"] == 0 and code_version.__wrapped__() != version:
        pytest.skip("the lab's source changed while the test ran: the checkpoint is another code version's run")
    steps = header["step"]  # one epoch's
    assert (resumed["resumed_epoch"], resumed["steps"], resumed["status"]) == (1, 2 * steps, "done")
    assert [row["resumed_epoch"] for row in rows.values()].count(0) == len(rows) - 1  # the others trained afresh
    assert not list(output.glob("runs/*/checkpoints/*.ckpt"))  # finished runs leave no checkpoint
