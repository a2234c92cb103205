"""Two local processes over jax.distributed (127.0.0.1) train like one process with the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# the smallest model that still trains (each run here is a subprocess, mostly startup and compilation)
CONFIG = """
model: {{d_model: 16, n_layers: 1, n_heads: 2, max_len: 32}}
data: {{source: text, path: {corpus}, seq_len: 16, batch_size: 8}}
train: {{steps: 12, log_every: 1, eval_every: 6, checkpoint_every: 6}}
eval: {{batches: 2}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(cfg: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "jaxorder.cli", "train", str(cfg), "--run-dir", str(run_dir), *overrides]


def train_losses(run_dir: Path) -> np.ndarray:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.asarray([r["loss"] for r in records if r["split"] == "train"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch".split()
    (tmp / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(3000)))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(CONFIG.format(corpus=tmp / "corpus.txt"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    port = free_port()
    workers = [subprocess.Popen(train_cmd(cfg, tmp / "two", "distributed.mode=explicit",
                                          f"distributed.coordinator=127.0.0.1:{port}",
                                          "distributed.num_processes=2", f"distributed.process_id={i}"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = []
    try:
        for w in workers:
            outputs.append(w.communicate(timeout=420))
    finally:
        for w in workers:  # a lone worker would wait for its peer until the deadline
            w.kill()
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    single = subprocess.run(train_cmd(cfg, tmp / "one"), env=env, capture_output=True, text=True, timeout=420)
    assert single.returncode == 0, single.stderr[-3000:]
    return tmp


def test_two_processes_match_one_process(runs):
    one, two = train_losses(runs / "one"), train_losses(runs / "two")
    assert len(one) == len(two) == 12
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    assert one[-1] < one[0]


def test_only_process_zero_writes_metrics_and_each_process_its_data_state(runs):
    records = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == sorted(set(steps))  # no duplicates from a second writer
    data_files = sorted(p.name for p in (runs / "two" / "checkpoints" / "12" / "data").glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]


def test_two_process_checkpoint_restores_in_one_process(runs):
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "eval", str(runs / "two"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = json.loads(proc.stdout)
    saved = json.loads((runs / "two" / "eval.json").read_text())
    assert restored["step"] == 12
    np.testing.assert_allclose(restored["bpb"], saved["bpb"], rtol=1e-6)


def test_two_process_checkpoint_resumes_training_in_one_process(runs, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(runs / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "12")
    (resumed / "eval.json").unlink()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(train_cmd(runs / "cfg.yaml", resumed), env=env, capture_output=True, text=True,
                          timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from checkpoint at step 6" in proc.stderr
    np.testing.assert_allclose(train_losses(resumed), train_losses(runs / "one"), atol=1e-5, rtol=0)
