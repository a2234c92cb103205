"""One writer per run directory: a second `train` on a held run directory is a one-line error
(exit 2); a lock left by a dead process is taken over with one warning."""
from __future__ import annotations

import json
import subprocess
import sys

from jaxorder import cli
from jaxorder.training.run_lock import LOCK_NAME, RunLock

from conftest import step_dirs


def test_a_second_writer_is_refused_with_one_line(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    before = sorted(p.name for p in run.rglob("*"))
    with RunLock(run):  # held through another open file: flock conflicts as between two processes
        code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run)])
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: run directory {run} is in use by process ")
    assert "--run-dir" in lines[0]
    assert sorted(p.name for p in run.rglob("*")) == before, "the refused process wrote to the run"


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "started": 0}))
    code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run)])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0, err
    assert len(warnings) == 1 and f"process {dead.pid} on h" in warnings[0] and "took over" in warnings[0]
    assert (run / LOCK_NAME).read_text() == "", "a clean exit leaves an empty (free) lock file"
    assert step_dirs(run) == [10, 20, 30]


def test_the_lock_is_released_after_an_error(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run), "model.d_model=64"])
    assert code == 2
    code = cli.main(["train", str(finished_run.config_path), "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 0 and "in use" not in err and "took over" not in err, err
