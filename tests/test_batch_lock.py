"""One batch per output folder (`piggylab.batch.batch_lock`): a second batch stops at once, naming
the first; the lock of a killed batch is released by the OS and taken over."""

import socket
from pathlib import Path

import pytest
import yaml
from kill_support import paused_child

from piggylab.batch import BatchBusy, lock_holder, parse_grid, run_batch
from piggylab.cli import main

FIXTURES = Path(__file__).parent / "notebooks_fixture"


def test_a_second_batch_stops_at_once_and_a_killed_batch_s_lock_is_taken_over(tmp_path, capsys):
    output, log = tmp_path / "out", tmp_path / "executions.log"
    spec = {"output": str(output), "notebooks_dir": str(FIXTURES),
            "runs": [{"notebook": "ok_metrics", "parameters": {"task": "alpha"}}], "defaults": {"log_file": str(log)}}
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(spec))

    with paused_child(f"""
        from pathlib import Path
        from kill_support import pause
        from piggylab.batch import batch_lock
        with batch_lock(Path({str(output)!r})):
            pause()
    """) as first:
        holder = lock_holder(output)
        assert (holder["pid"], holder["host"]) == (first.pid, socket.gethostname())
        message = (f"{output} is in use by the batch of process {first.pid} on host {socket.gethostname()}, "
                   f"started {holder['started']}; wait for it to finish (or stop it), or give this batch another "
                   "output folder")
        with pytest.raises(BatchBusy) as refused:
            run_batch(parse_grid(spec), scheduler="local-threads", progress=False)
        assert str(refused.value) == message
        assert main(["batch", str(grid_file), "--scheduler", "local-threads", "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == f"piggylab batch: error: {message}"
        assert not log.exists()  # nothing ran
    killed = first.pid  # SIGKILLed: the OS released its lock, its record stayed

    assert lock_holder(output)["pid"] == killed
    result = run_batch(parse_grid(spec), scheduler="local-threads", progress=True)
    assert [o.status for o in result.outcomes] == ["ok"] and log.read_text().splitlines() == ["alpha 0"]
    err = capsys.readouterr().err
    assert f"taking over {output}: its lock was left by the batch of process {killed} on host" in err
    assert lock_holder(output) is None  # a batch that ends removes its record
