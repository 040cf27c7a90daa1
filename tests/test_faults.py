"""Faults while writing (`piggylab.io`): a SIGKILL halfway through writing a task file, a
checkpoint, ``results.csv`` or ``report.html``, and a full disk, each leave the previous file
intact and readable. Each fault happens in a child process (`kill_support`), patched there only."""

import json

import pytest
import torch
from kill_support import kill_when_paused, run_child
from test_batch import fake_run
from test_checkpoints import fit, make_net

import piggylab as pl
from piggylab.checkpoints import read_checkpoint
from piggylab.report import build_report
from piggylab.storage import read_task_file


def frozen_net(init: str) -> pl.PiggybackNet:
    """A network over the tests' tiny backbone with task "a" frozen from scores set by `init`
    (`constant`: an all-ones mask; `uniform`: about half zeros), so two inits give two files."""
    torch.manual_seed(0)
    net = pl.PiggybackNet(pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1), backbone_name="tiny-test")
    net.add_task("a", 3, mask=pl.MaskConfig(init=init), seed=0)
    net.freeze_task("a")
    return net


def leftovers(path) -> list:
    """The temporary files that writes of `path` left (a killed write leaves its own)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def batch_output(tmp_path, accuracy: float):
    output = tmp_path / "out"
    fake_run(output, "r1", "01_quickstart", {"task": "greek"},
             [{"task": "greek", "method": "piggyback", "accuracy": accuracy}])
    return output


def test_a_kill_halfway_through_save_task_leaves_the_previous_task_file(tmp_path):
    path = tmp_path / "a.safetensors"
    pl.save_task(frozen_net("uniform"), "a", path)
    before = path.read_bytes()
    kill_when_paused(f"""
        from kill_support import pause_writing
        from test_faults import frozen_net
        import piggylab as pl
        net = frozen_net("constant")
        pause_writing("a.safetensors")
        pl.save_task(net, "a", {str(path)!r})
    """)
    assert path.read_bytes() == before
    (half,) = leftovers(path)
    assert 0 < half.stat().st_size < len(before)  # killed halfway through the new file
    net = frozen_net("uniform")
    net.remove_task("a")
    pl.load_task(net, path)
    assert not all(mask.all() for mask in net.masks("a").values())  # the previous, uniform-init task


def test_a_kill_halfway_through_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "a.ckpt"
    kill_when_paused(f"""
        from kill_support import pause_writing
        from test_checkpoints import fit, make_net
        pause_writing("a.ckpt", nth=2)  # the checkpoint of epoch 2
        fit(make_net(), {str(path)!r}, epochs=2)
    """)
    assert read_checkpoint(path)[1]["epoch"] == 1
    assert len(leftovers(path)) == 1
    history = fit(make_net(), path, resume=True, epochs=2)
    assert history["epoch"].tolist() == [1, 2]


@pytest.mark.parametrize("name", ["results.csv", "report.html"])
def test_a_kill_halfway_through_the_report_leaves_the_previous_file(tmp_path, name):
    output = batch_output(tmp_path, accuracy=0.5)
    build_report(output)
    before = (output / name).read_bytes()
    metrics = output / "runs" / "r1" / "metrics.json"
    metrics.write_text(metrics.read_text().replace("0.5", "0.75"))  # the next report differs
    kill_when_paused(f"""
        from kill_support import pause_writing
        from piggylab.report import build_report
        pause_writing({name!r})
        build_report({str(output)!r})
    """)
    assert (output / name).read_bytes() == before and len(leftovers(output / name)) == 1
    build_report(output)  # unkilled, the same write replaces it: the killed one would have
    assert (output / name).read_bytes() != before and b"0.75" in (output / "results.csv").read_bytes()


FULL_DISK = """
    import resource, signal
    from piggylab.io import NoSpaceError
    {setup}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        {write}
    except NoSpaceError as error:
        print(error)
"""


def test_a_full_disk_fails_clearly_and_keeps_the_previous_file(tmp_path):
    task, checkpoint, output = tmp_path / "a.safetensors", tmp_path / "a.ckpt", batch_output(tmp_path, 0.5)
    pl.save_task(frozen_net("uniform"), "a", task)
    fit(make_net(), checkpoint, epochs=1)
    build_report(output)
    new = tmp_path / "new.json"
    cases = [
        (task, "from test_faults import frozen_net; import piggylab as pl; net = frozen_net('constant')",
         f"pl.save_task(net, 'a', {str(task)!r})"),
        (checkpoint, "from test_checkpoints import fit, make_net; net = make_net()",
         f"fit(net, {str(checkpoint)!r}, epochs=1)"),
        (output / "results.csv", "from piggylab.report import build_report", f"build_report({str(output)!r})"),
        (new, "from piggylab.io import write_json", f"write_json({str(new)!r}, list(range(1000)))"),
    ]
    for path, setup, write in cases:
        before = path.read_bytes() if path.exists() else None
        done = run_child(FULL_DISK.format(setup=setup, write=write))
        assert done.returncode == 0, done.stderr
        intact = "the previous file is intact" if before is not None else "no file was there before, none is now"
        assert done.stdout.strip() == f"no space left while writing {path} (File too large): {intact}"
        assert (path.read_bytes() if path.exists() else None) == before and not leftovers(path)
    assert read_checkpoint(checkpoint)[1]["epoch"] == 1 and read_task_file(task)[1]["task"] == "a"
    assert json.loads((output / "runs" / "r1" / "metrics.json").read_text())["results"][0]["accuracy"] == 0.5
