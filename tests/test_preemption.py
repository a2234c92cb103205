"""Two local processes over jax.distributed (127.0.0.1, 4 forced CPU devices each): SIGTERM reaches
ONE of them (process 1, after step K, by tests/scripts/sigterm_at.py); both save the same step (K+1:
the agreed decision is read one step late), both exit 143, and restarting both resumes to the
parameters of an uninterrupted run. Also: a damaged newest checkpoint is moved aside once (by
process 0) when two processes resume. Each two-process run takes ~20-60 s on 2 busy CPU cores (the
module runs four or more), so every test here is marked slow (`make test-all`); the fast suite covers
the same logic by tests/test_preemption_unit.py (the one-step-late agreement over a fake exchange of
several processes and the real collective over one), tests/test_train.py (SIGTERM end to end in one
process), tests/test_restore.py (a damaged checkpoint moved aside) and tests/test_multihost.py (two
real processes train, checkpoint and resume)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxorder.evaluation.runs import load_params

from conftest import step_dirs

REPO = Path(__file__).resolve().parents[1]
SIGTERM_AT = REPO / "tests" / "scripts" / "sigterm_at.py"
STEPS = 12
CONFIG = f"""
model: {{d_model: 16, n_layers: 1, n_heads: 2, max_len: 32}}
data: {{source: text, path: CORPUS, seq_len: 16, batch_size: 8}}
train: {{steps: {STEPS}, log_every: 1, eval_every: 100, checkpoint_every: 4, max_to_keep: 10}}
eval: {{batches: 1}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preemption")
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch".split()
    (tmp / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(3000)))
    (tmp / "cfg.yaml").write_text(CONFIG.replace("CORPUS", str(tmp / "corpus.txt")))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONPATH=str(REPO))
    return tmp, env


def run_two(tmp: Path, env: dict, run_dir: Path, sigterm_after: int | None = None) -> list[tuple[int, str]]:
    """Both processes of one run; [(exit status, stderr)] of process 0 and 1."""
    port = free_port()
    outputs, workers = [], []
    for i in range(2):
        args = ["train", str(tmp / "cfg.yaml"), "--run-dir", str(run_dir), "distributed.mode=explicit",
                f"distributed.coordinator=127.0.0.1:{port}", "distributed.num_processes=2",
                f"distributed.process_id={i}"]
        prefix = ([str(SIGTERM_AT), "1", str(sigterm_after)] if sigterm_after is not None
                  else ["-m", "jaxorder.cli"])
        workers.append(subprocess.Popen([sys.executable, *prefix, *args], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True))
    try:
        for w in workers:
            outputs.append((w.wait(timeout=420), w.stderr.read()))
    finally:
        for w in workers:  # a lone worker would wait for its peer until the deadline
            w.kill()
            w.wait()
    return outputs


@pytest.fixture(scope="module")
def uninterrupted(setup):
    tmp, env = setup
    outputs = run_two(tmp, env, tmp / "uninterrupted")
    assert [code for code, _ in outputs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    return load_params(tmp / "uninterrupted")[1]


def _sigterm_one_process_then_resume(setup, uninterrupted, k: int) -> None:
    tmp, env = setup
    run = tmp / f"sigterm_after_{k}"
    outputs = run_two(tmp, env, run, sigterm_after=k)
    errors = outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert [code for code, _ in outputs] == [143, 143], errors
    assert f"SIGTERM: saved checkpoint at step {k + 1};" in outputs[0][1], errors
    assert "Traceback" not in errors, errors
    saved = step_dirs(run)
    assert saved[-1] == k + 1, saved  # the step after the signal (agreed one step late), on both
    data_states = sorted(p.name for p in (run / "checkpoints" / str(k + 1) / "data").glob("process_*"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]  # both processes saved it
    assert not (run / "eval.json").exists()

    resumed = run_two(tmp, env, run)
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:] + resumed[1][1][-3000:]
    assert f"resumed from checkpoint at step {k + 1}" in resumed[0][1]
    _, params, step = load_params(run)
    assert step == STEPS
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# fast: test_preemption_unit.py::test_several_processes_act_one_step_late_on_the_exchanged_flags
@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_both_and_resumes(setup, uninterrupted):
    _sigterm_one_process_then_resume(setup, uninterrupted, 5)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 8, 11])  # 3: the agreed step (4) was just checkpointed; 11: the last
def test_sigterm_to_one_process_at_other_steps(setup, uninterrupted, k):
    _sigterm_one_process_then_resume(setup, uninterrupted, k)


# fast: test_restore.py::test_damaged_newest_checkpoint_falls_back_with_one_warning_line
@pytest.mark.slow
def test_two_processes_move_a_damaged_checkpoint_aside_once(setup, uninterrupted):
    tmp, env = setup
    import shutil

    run = tmp / "damaged"
    shutil.copytree(tmp / "uninterrupted", run)
    (run / "eval.json").unlink()
    for p in (run / "checkpoints" / str(STEPS) / "state").rglob("*"):
        if p.is_file():
            p.write_bytes(b"\0" * (p.stat().st_size // 2))
    outputs = run_two(tmp, env, run)
    assert [code for code, _ in outputs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    moved = [p.name for p in run.rglob("corrupt_checkpoint_*")]
    assert len(moved) == 1, moved
    assert "moved it to" in outputs[0][1] and "moved it to" not in outputs[1][1]  # process 0 alone
    _, params, step = load_params(run)  # retrained from step 8 to the same parameters
    assert step == STEPS
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
