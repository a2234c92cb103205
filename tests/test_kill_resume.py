"""Kill -9 at 20 points of one run, each time restarting the same command: the run ends with the
parameters, metrics and evaluation of an uninterrupted run (same steps, same data order).

The kill points are observable moments, not instrumented ones: half are while an async checkpoint
is being written (its `*.orbax-checkpoint-tmp*` directory exists), half a few milliseconds after a
new checkpoint was committed (the loop is then between steps, writing metrics or the next save).
Marked slow: 22 process starts, ~3.5 min on 2 CPU cores (the compilation is cached across them)."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxorder.evaluation.runs import load_params
from jaxorder.training.metrics import read_metrics

from conftest import SUBPROCESS_STEPS, SUBPROCESS_TIMEOUT, cli_command, run_cli, step_dirs

KILLS = 20
OVERRIDES = [f"train.steps={SUBPROCESS_STEPS}", "train.checkpoint_every=10", "train.log_every=10",
             "train.eval_every=1000", "train.async_checkpointing=true", "train.max_to_keep=3"]


def _saving(run: Path) -> bool:
    ckpt = run / "checkpoints"
    return ckpt.is_dir() and any("orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())


def _start_and_kill(command, env, cwd: Path, run: Path, point: int, log: Path) -> int | None:
    """Starts the run and kills it at kill point `point`; None if it finished first."""
    before = step_dirs(run)
    with open(log, "a") as err:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while proc.poll() is None:
                assert time.monotonic() < deadline, "no progress before the deadline"
                if point % 2 == 0 and _saving(run) and step_dirs(run) != before:
                    break  # mid async save (after at least one new commit, so every restart progresses)
                if point % 2 == 1 and len(set(step_dirs(run)) - set(before)) >= 1:
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

    command = cli_command("train", tiny_config_file, "--run-dir", killed, *OVERRIDES)
    log = tmp_path / "killed.stderr"
    kills = 0
    for point in range(KILLS):
        code = _start_and_kill(command, cli_env, tmp_path, killed, point, log)
        if code is None:
            break
        assert code == -signal.SIGKILL
        kills += 1
    assert kills >= 15, f"only {kills} kills landed before the run finished"
    final = run_cli(["train", tiny_config_file, "--run-dir", killed, *OVERRIDES], cli_env, tmp_path)
    assert final.returncode == 0, final.stderr
    stderr = log.read_text() + final.stderr
    assert "Traceback" not in stderr, stderr
    assert "took over the lock" in stderr  # a kill -9 leaves the lock file; the next start takes it

    _, params_a, step_a = load_params(straight)
    _, params_b, step_b = load_params(killed)
    assert step_a == step_b == SUBPROCESS_STEPS
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rec_a = [r for r in read_metrics(straight) if r["split"] == "train"]
    rec_b = [r for r in read_metrics(killed) if r["split"] == "train"]
    every_log = list(range(10, SUBPROCESS_STEPS + 1, 10))
    assert [r["step"] for r in rec_b] == [r["step"] for r in rec_a] == every_log
    assert [r["loss"] for r in rec_b] == [r["loss"] for r in rec_a]
    eval_a = json.loads((straight / "eval.json").read_text())
    eval_b = json.loads((killed / "eval.json").read_text())
    assert eval_a["bpb"] == eval_b["bpb"]
