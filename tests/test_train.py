"""End-to-end tests of the training loop: overfitting, resume after SIGKILL/SIGTERM, corrupted
checkpoints, metrics and TensorBoard output.

Signals and process death are tested on `python -m jaxorder.cli` subprocesses (with timeouts);
everything else calls `jaxorder.training.loop.train` in-process on a tiny model (see conftest.py).
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxorder import cli
from jaxorder import config as config_lib
from jaxorder.evaluation.runs import load_params
from jaxorder.training.loop import Preempted, train
from jaxorder.training.metrics import read_metrics

from conftest import (
    SENTENCE,
    SUBPROCESS_STEPS,
    SUBPROCESS_TIMEOUT,
    TINY,
    cli_command,
    read_tensorboard_scalars,
    run_cli,
    step_dirs,
)


def tiny_cfg(data_path: Path, objective: str = "l2r", steps: int = 40, **train_fields) -> config_lib.Config:
    overrides = [*TINY, "data.source=text", f"data.path={data_path}", f"objective.name={objective}",
                 f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
    overrides += [f"train.{k}={v}" for k, v in train_fields.items()]
    return config_lib.load(None, overrides)


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == "train"]


def assert_same_params(params_a, params_b) -> None:
    assert jax.tree.structure(params_a) == jax.tree.structure(params_b)
    leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
    assert leaves_a, "no parameters"
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def file_listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- 1. overfit

@pytest.mark.parametrize("objective", ["l2r", "r2l"])
def test_autoregressive_objective_overfits_repeated_sentence(objective, repeated_corpus, tmp_path):
    # Every window is the same 32-byte sentence: the exact NLL can go to ~0. Measured after 80
    # steps: ~0.003 nats/token (train and val) for both directions; starts at ~5.5 (uniform).
    cfg = tiny_cfg(repeated_corpus, objective, steps=80)
    result = train(cfg, tmp_path / objective)

    records = train_records(tmp_path / objective)
    assert [r["step"] for r in records] == list(range(10, 81, 10))
    assert records[0]["loss"] > 1.0, "the first logged loss (step 10) should still be far from ~0"
    assert records[-1]["loss"] < 0.1, f"final {objective} training loss {records[-1]['loss']:.4f} nats/token"
    assert result["kind"] == "exact" and result["objective"] == objective
    assert result["nll_per_token"] < 0.1
    assert result["bpb"] < 0.15  # one byte per token here, so bpb = nll / ln 2


def test_masked_diffusion_overfits_repeated_sentence(repeated_corpus, tmp_path):
    # The MDLM ELBO is noisy (t ~ U(eps, 1) weighted by 1/t) and a RoPE-only bidirectional model
    # must locate positions from the window's edges when everything is masked, so it does not
    # reach ~0 as fast. Measured over 4 seeds after 300 steps: val ELBO 0.18-0.27 nats/token,
    # mean of the last 5 logged training losses 0.25-0.39. A position-blind model cannot beat
    # the sentence's unigram entropy (~2.6 nats/token); the thresholds are ~2x the measured values.
    cfg = tiny_cfg(repeated_corpus, "mdm", steps=300)
    result = train(cfg, tmp_path / "mdm")

    counts = Counter(SENTENCE)
    unigram = -sum(c / len(SENTENCE) * math.log(c / len(SENTENCE)) for c in counts.values())
    assert unigram > 2.4
    records = train_records(tmp_path / "mdm")
    assert records[0]["loss"] > 2.0
    last5 = float(np.mean([r["loss"] for r in records[-5:]]))
    assert last5 < 0.8, f"mdm training loss (mean of last 5 logs) {last5:.3f} nats/token"
    assert all(0.0 < r["mask_rate"] < 1.0 for r in records)
    assert result["kind"] == "upper bound (ELBO)" and result["objective"] == "mdm"
    assert result["nll_per_token"] < 0.6, f"mdm val ELBO {result['nll_per_token']:.3f} nats/token"


# ----------------------------------------------------------------------------- 2. SIGKILL + resume

def test_sigkill_then_resume_gives_identical_params(tmp_path, tiny_config_file, cli_env):
    total = SUBPROCESS_STEPS
    overrides = [f"train.steps={total}", "train.checkpoint_every=50", "train.eval_every=200",
                 "train.async_checkpointing=true"]
    run_a, run_b = tmp_path / "A", tmp_path / "B"

    done = run_cli(["train", tiny_config_file, "--run-dir", run_a, *overrides], cli_env, tmp_path)
    assert done.returncode == 0, done.stderr

    # B: SIGKILL as soon as the first checkpoint is committed, long before the last step.
    command = cli_command("train", tiny_config_file, "--run-dir", run_b, *overrides)
    with open(tmp_path / "B.stderr", "w") as err:
        proc = subprocess.Popen(command, env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while not step_dirs(run_b):
                assert proc.poll() is None, (f"run B ended before its first checkpoint:\n"
                                             f"{(tmp_path / 'B.stderr').read_text()}")
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.002)
            proc.kill()
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert returncode == -signal.SIGKILL, "run B finished before it could be killed"
    assert total not in step_dirs(run_b) and not (run_b / "eval.json").exists()

    resumed = run_cli(["train", tiny_config_file, "--run-dir", run_b, *overrides], cli_env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"resumed from checkpoint at step (\d+)", resumed.stderr)
    assert match, resumed.stderr
    assert 50 <= int(match.group(1)) < total and int(match.group(1)) % 50 == 0

    cfg_a, params_a, step_a = load_params(run_a)
    cfg_b, params_b, step_b = load_params(run_b)
    assert step_a == step_b == total and cfg_a == cfg_b
    assert_same_params(params_a, params_b)

    rec_a, rec_b = train_records(run_a), train_records(run_b)
    steps_b = [r["step"] for r in rec_b]
    assert len(steps_b) == len(set(steps_b)), f"duplicate train steps in B's metrics.jsonl: {steps_b}"
    assert steps_b == [r["step"] for r in rec_a] == list(range(10, total + 1, 10))
    assert [r["loss"] for r in rec_b] == [r["loss"] for r in rec_a]
    eval_a = json.loads((run_a / "eval.json").read_text())
    eval_b = json.loads((run_b / "eval.json").read_text())
    assert eval_a["bpb"] == eval_b["bpb"] and eval_b["step"] == total


# ----------------------------------------------------------------------------- 3. SIGTERM

def test_sigterm_saves_checkpoint_exits_143_and_resumes(tmp_path, tiny_config_file, cli_env):
    # No periodic checkpoints (checkpoint_every > steps): the only one is the SIGTERM save. (A
    # SIGTERM during a periodic-checkpoint step has its own test below.)
    total = SUBPROCESS_STEPS
    overrides = [f"train.steps={total}", "train.checkpoint_every=1000", "train.eval_every=1000"]
    run = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    command = cli_command("train", tiny_config_file, "--run-dir", run, *overrides)
    with open(err_path, "w") as err:
        proc = subprocess.Popen(command, env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while f"step 10/{total} loss" not in err_path.read_text():
                assert proc.poll() is None, f"training ended early: {err_path.read_text()}"
                assert time.monotonic() < deadline, "training never logged step 10"
                time.sleep(0.002)
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text()
    assert returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    match = re.search(r"SIGTERM: saved checkpoint at step (\d+)", stderr)
    assert match, stderr
    stopped = int(match.group(1))
    assert 10 <= stopped < total
    assert step_dirs(run) == [stopped]
    assert not (run / "eval.json").exists()

    resumed = run_cli(["train", tiny_config_file, "--run-dir", run, *overrides], cli_env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint at step {stopped}" in resumed.stderr
    assert json.loads((run / "eval.json").read_text())["step"] == total
    assert total in step_dirs(run)
    assert load_params(run)[2] == total
    steps = [r["step"] for r in train_records(run)]
    assert steps == list(range(10, total + 1, 10)), "train records are missing or duplicated"


def test_sigterm_during_checkpoint_step_still_preempts_cleanly(tmp_path, repeated_corpus, monkeypatch):
    """Deterministic: SIGTERM lands right after the periodic save at step 10 (in the same step)."""
    from jaxorder.training import checkpoint as checkpoint_lib

    original_save = checkpoint_lib.Checkpointer.save

    def save_then_sigterm(self, step, *args, force=False, **kwargs):
        saved = original_save(self, step, *args, force=force, **kwargs)
        if step == 10 and not force:
            assert callable(signal.getsignal(signal.SIGTERM)), "train() installed no SIGTERM handler"
            os.kill(os.getpid(), signal.SIGTERM)
        return saved

    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", save_then_sigterm)
    cfg = tiny_cfg(repeated_corpus, steps=40, checkpoint_every=5)
    with pytest.raises(Preempted):
        train(cfg, tmp_path / "run")
    assert step_dirs(tmp_path / "run")[-1] == 10


# ----------------------------------------------------------------------------- 4. corrupted checkpoint

def _corrupt_state(step_dir: Path) -> None:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    assert files
    for p in files:  # truncate to half and zero the bytes
        p.write_bytes(b"\0" * (p.stat().st_size // 2))


def _assert_moved_aside(run_dir: Path, listing: list[str]) -> None:
    """Some directory of the run (not checkpoints/30) still holds every file of the corrupted step."""
    candidates = [d for d in run_dir.rglob("*") if d.is_dir() and d != run_dir / "checkpoints" / "30"
                  and file_listing(d) == listing]
    assert candidates, f"the corrupted checkpoint's files are gone: {file_listing(run_dir)}"


def _single_warning(stderr: str) -> str:
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, stderr
    return warnings[0]


def test_corrupted_newest_checkpoint_eval_falls_back(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    assert step_dirs(run) == [10, 20, 30]
    listing = file_listing(run / "checkpoints" / "30")
    _corrupt_state(run / "checkpoints" / "30")

    capsys.readouterr()
    assert cli.main(["eval", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["step"] == 20, "eval did not fall back to the previous checkpoint"
    warning = _single_warning(err)
    assert "step 30" in warning and "previous checkpoint" in warning, warning
    assert step_dirs(run) == [10, 20]
    _assert_moved_aside(run, listing)
    assert "Traceback" not in err


def test_corrupted_newest_checkpoint_train_resumes_from_previous(tmp_path, finished_run, capsys):
    run = finished_run.copy_to(tmp_path / "run")
    _, params_final, _ = load_params(finished_run.run_dir)
    listing = file_listing(run / "checkpoints" / "30")
    _corrupt_state(run / "checkpoints" / "30")  # eval.json stays: the run had finished

    capsys.readouterr()
    result = train(config_lib.load(finished_run.config_path), run)
    err = capsys.readouterr().err
    warning = _single_warning(err)
    assert "step 30" in warning and "previous checkpoint" in warning, warning
    assert "resumed from checkpoint at step 20" in err and "already trained" not in err
    assert result["step"] == 30 and step_dirs(run) == [10, 20, 30]
    _assert_moved_aside(run, listing)
    # Steps 21..30 recomputed from the step-20 checkpoint reproduce the original run exactly.
    _, params_again, step = load_params(run)
    assert step == 30
    assert_same_params(params_final, params_again)
    assert result["bpb"] == finished_run.result["bpb"]


# ----------------------------------------------------------------------------- 8. metrics and TensorBoard

def test_tensorboard_writer_does_not_import_torch(tmp_path):
    """tensorboardX imports torch (when installed) at module load; the writer keeps it out of a
    training process (seconds of start-up per run), and torch stays importable afterwards."""
    code = ("import sys; from jaxorder.training.metrics import MetricsWriter; "
            f"w = MetricsWriter({str(tmp_path)!r}, tensorboard=True); w.write(1, 'train', {{'loss': 1.0}}); "
            "w.close(); print('torch' in sys.modules); import torch")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_metrics_jsonl_and_tensorboard_events(finished_run):
    run = finished_run.run_dir
    records = read_metrics(run)
    train_recs = [r for r in records if r["split"] == "train"]
    val_recs = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train_recs] == [10, 20, 30]
    assert [r["step"] for r in val_recs] == [20, 30]
    for r in train_recs:
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_per_s"] > 0
        assert r["tokens_seen"] == r["step"] * 8 * 32
    for r in val_recs:
        assert 0 < r["bpb"] < 8.5 and r["bpb_stderr"] > 0
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]
    assert val_recs[-1]["bpb"] == pytest.approx(finished_run.result["bpb"])
    eval_json = json.loads((run / "eval.json").read_text())
    assert eval_json["bpb"] == finished_run.result["bpb"] and eval_json["step"] == 30

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    scalars = read_tensorboard_scalars(run)
    assert [s for s, _ in scalars["train/loss"]] == [10, 20, 30]
    assert [s for s, _ in scalars["val/bpb"]] == [20, 30]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["loss"] for r in train_recs],
                               rtol=1e-6)
    assert "[run] step 30/30 val" in finished_run.stderr
