"""Kill -9 at 20 points of one run, each time restarting the same command: the run ends with the
parameters, metrics and evaluation of an uninterrupted run (same steps, same data order).

The 20 points cycle through four kinds:
- while an async checkpoint is being written (its `*.orbax-checkpoint-tmp*` directory exists);
- a few milliseconds after a new checkpoint was committed (the loop is between steps);
- in the middle of writing the data iterator's state file of a checkpoint, and
- in the middle of writing a line of metrics.jsonl;
the last two are reached deterministically by tests/scripts/kill_during.py, which makes the process
SIGKILL itself half-way through that write; the test checks that the half-written file is there.
Marked slow: 22 process starts, ~4 min on 2 CPU cores (the compilation is cached across them)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxorder.evaluation.runs import load_params
from jaxorder.training.metrics import read_metrics

from conftest import SUBPROCESS_TIMEOUT, cli_command, run_cli, step_dirs

KILLS = 20
STEPS = 600
OVERRIDES = [f"train.steps={STEPS}", "train.checkpoint_every=10", "train.log_every=10",
             "train.eval_every=1000", "train.async_checkpointing=true", "train.max_to_keep=3"]
KILL_DURING = Path(__file__).parent / "scripts" / "kill_during.py"
KINDS = ("async-save", "after-commit", "iterator-save", "metrics-write")
# The injected kills come at the 2nd iterator save / 3rd metrics line of a process: the process's
# first checkpoint is then committed (Orbax finishes one async save before starting the next), so
# every restart makes progress.
NTH_CALL = {"iterator-save": 2, "metrics-write": 3}


def _saving(run: Path) -> bool:
    ckpt = run / "checkpoints"
    return ckpt.is_dir() and any("orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())


def _half_written_iterator_state(run: Path) -> bool:
    """A data-iterator state file inside an uncommitted checkpoint that does not parse."""
    for path in (run / "checkpoints").rglob("process_0-of-1.json"):
        if "tmp" in str(path.relative_to(run)):
            try:
                json.loads(path.read_text())
            except ValueError:
                return True
    return False


def _half_written_metrics_line(run: Path) -> bool:
    text = (run / "metrics.jsonl").read_text()
    if text.endswith("\n"):
        return False
    try:
        json.loads(text.splitlines()[-1])
    except ValueError:
        return True
    return False


def _start_and_kill(args: list, env, cwd: Path, run: Path, kind: str, point: int, log: Path) -> int | None:
    """Starts the run and kills it at a point of `kind`; None if it finished first."""
    before = step_dirs(run)
    command = ([sys.executable, str(KILL_DURING), kind, str(NTH_CALL[kind]), *map(str, args)]
               if kind in NTH_CALL else cli_command(*args))
    with open(log, "a") as err:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            if kind in NTH_CALL:
                code = proc.wait(timeout=SUBPROCESS_TIMEOUT)
                return None if code == 0 else code
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while proc.poll() is None:
                assert time.monotonic() < deadline, "no progress before the deadline"
                if kind == "async-save" and _saving(run) and step_dirs(run) != before:
                    break  # mid async save (after at least one new commit, so every restart progresses)
                if kind == "after-commit" and len(set(step_dirs(run)) - set(before)) >= 1:
                    time.sleep(0.001 * (point % 7))
                    break
                time.sleep(0.0005)
            if proc.poll() is not None:
                return None
            proc.send_signal(signal.SIGKILL)
            return proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_kill_9_at_20_points_then_resume_gives_the_uninterrupted_run(tmp_path, tiny_config_file, cli_env):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_cli(["train", tiny_config_file, "--run-dir", straight, *OVERRIDES], cli_env, tmp_path)
    assert done.returncode == 0, done.stderr

    args = ["train", tiny_config_file, "--run-dir", killed, *OVERRIDES]
    log = tmp_path / "killed.stderr"
    landed = []
    for point in range(KILLS):
        kind = KINDS[point % len(KINDS)]
        before = step_dirs(killed)
        code = _start_and_kill(args, cli_env, tmp_path, killed, kind, point, log)
        tail = log.read_text()[-2000:]
        assert code == -signal.SIGKILL, f"kill {point} ({kind}) did not land: {code}\n{tail}"
        if kind == "iterator-save":
            assert _half_written_iterator_state(killed), "no half-written iterator state after the kill"
        if kind == "metrics-write":
            assert _half_written_metrics_line(killed), "no half-written metrics line after the kill"
        assert step_dirs(killed)[-1] > (before or [0])[-1], f"no checkpoint progress before kill {point}"
        landed.append(kind)
    assert len(landed) == KILLS
    final = run_cli(args, cli_env, tmp_path)
    assert final.returncode == 0, final.stderr
    stderr = log.read_text() + final.stderr
    assert "Traceback" not in stderr, stderr
    assert "took over the lock" in stderr  # a kill -9 leaves the lock file; the next start takes it
    assert "dropped 1 unreadable line(s)" in stderr  # the half-written metrics lines

    _, params_a, step_a = load_params(straight)
    _, params_b, step_b = load_params(killed)
    assert step_a == step_b == STEPS
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rec_a = [r for r in read_metrics(straight) if r["split"] == "train"]
    rec_b = [r for r in read_metrics(killed) if r["split"] == "train"]
    every_log = list(range(10, STEPS + 1, 10))
    assert [r["step"] for r in rec_b] == [r["step"] for r in rec_a] == every_log
    assert [r["loss"] for r in rec_b] == [r["loss"] for r in rec_a]
    eval_a = json.loads((straight / "eval.json").read_text())
    eval_b = json.loads((killed / "eval.json").read_text())
    assert eval_a["bpb"] == eval_b["bpb"]
