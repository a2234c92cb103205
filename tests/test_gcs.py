"""gs:// run directories and data against a local GCS emulator (tests/gcs_emulator.py).

Fast: paths (URLs are never made pathlib paths), the remote metrics scheme (one new object per
flush; a resume writes a base that hides older objects; cut lines and lines past the checkpoint
are dropped), TensorBoard uploads, the object lock. Slow: a tiny run whose data, run directory
and TensorBoard are on gs:// is killed with SIGKILL after a checkpoint, resumed and evaluated.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.paths import absolute, as_path, is_url

from conftest import (
    REPO,
    SENTENCE,
    SUBPROCESS_TIMEOUT,
    TINY_MODEL_YAML,
    cli_command,
    read_tensorboard_scalars,
    run_cli,
)
from gcs_emulator import BUCKET, gcs_emulator, use_in_process


@pytest.fixture(scope="module")
def gcs():
    """The emulator's environment; this process's gcsfs points at it too."""
    saved = dict(os.environ)
    with gcs_emulator() as env:
        use_in_process(env)
        yield env
    os.environ.clear()
    os.environ.update(saved)


def _unique(prefix: str) -> str:
    return f"gs://{BUCKET}/{prefix}-{time.monotonic_ns()}"


# ----------------------------------------------------------------------------- paths

def test_urls_stay_urls():
    # the bug: pathlib turned gs://b/x into $PWD/gs:/b/x
    from jaxorder.training.loop import with_absolute_paths

    cfg = config_lib.load(None, ["data.source=text", "data.path=gs://bkt/corpus"])
    assert with_absolute_paths(cfg).data.path == "gs://bkt/corpus"
    local = with_absolute_paths(config_lib.load(None, ["data.source=text", "data.path=corpus"]))
    assert local.data.path == str(Path("corpus").absolute())
    assert is_url("gs://b/x") and not is_url("/tmp/gs:/b") and absolute("gs://b/x") == "gs://b/x"
    assert str(as_path("gs://b/x/y")) == "gs://b/x/y" and str(as_path("~/x")) == str(Path.home() / "x")


# ----------------------------------------------------------------------------- big configs

@pytest.mark.parametrize("size", ["1b", "8b"])
def test_big_configs_require_a_data_path(size, cli_env, tmp_path):
    # the bug: a pretraining-size config silently training on the embedded corpus
    out = run_cli(["train", REPO / "configs" / "experiments" / f"{size}.yaml", "--run-dir", tmp_path / "r"],
                  cli_env, tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "data.source=prepared needs data.path" in out.stderr and "set data.path" in out.stderr
    assert not (tmp_path / "r").exists()
    cfg = config_lib.load(REPO / "configs" / "experiments" / f"{size}.yaml", ["data.path=gs://b/prepared"])
    assert cfg.data.source == "prepared" and cfg.data.path == "gs://b/prepared"


def test_big_model_on_embedded_corpus_needs_the_override(cli_env, tmp_path):
    big = ["model.d_model=2048", "model.n_layers=16", "model.n_heads=16", "model.vocab_size=32000"]
    out = run_cli(["train", REPO / "configs" / "experiments" / "1b.yaml", "--run-dir", tmp_path / "r",
                   "data.source=shakespeare"], cli_env, tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "0.94B parameters on the embedded Shakespeare corpus" in out.stderr
    assert "data.allow_embedded_corpus=true" in out.stderr
    config_lib.load(None, [*big, "data.allow_embedded_corpus=true"])  # the override lets it through
    config_lib.load(None, [*big, "data.source=markov"])  # other sources are not limited
    # the 350m size (0.37B) stays below the limit
    config_lib.load(None, ["model.d_model=1024", "model.n_layers=24", "model.n_heads=16",
                           "model.vocab_size=32000"])


@pytest.mark.parametrize("objective", ["l2r", "ao_ar"])
def test_param_count_matches_the_initialized_model(objective):
    import jax

    from jaxorder import model, objectives

    cfg = config_lib.load(None, ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=48",
                                 "model.max_len=64", "data.seq_len=32", f"objective.name={objective}"])
    target = objectives.of(cfg).target_positions
    params = jax.eval_shape(lambda: model.init_params(cfg.model, jax.random.PRNGKey(0),
                                                      target_positions=target))
    assert cfg.model.param_count(target) == sum(x.size for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- metrics

def _objects(run: str) -> dict[str, str]:
    from etils import epath

    folder = epath.Path(run) / "metrics"
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.is_dir() else {}


def test_remote_metrics_append_one_object_per_flush(gcs):
    from jaxorder.training.metrics import MetricsWriter, read_metrics

    run = _unique("metrics")
    w = MetricsWriter(run, 0, tensorboard=False)
    w.write(10, "train", {"loss": 3.0})
    w.write(20, "train", {"loss": 2.0})
    assert _objects(run) == {}  # pending until a flush (a checkpoint)
    w.flush()
    first = _objects(run)
    w.write(30, "train", {"loss": 1.0})
    w.flush()
    w.flush()  # nothing pending: no empty object
    objects = _objects(run)
    # appended, never rewritten: the first object is unchanged and the new one holds only its line
    assert list(objects) == ["00000000.jsonl", "00000001.jsonl"]
    assert objects["00000000.jsonl"] == first["00000000.jsonl"]
    assert [json.loads(x)["step"] for x in objects["00000001.jsonl"].splitlines()] == [30]
    w.close()
    assert [r["step"] for r in read_metrics(run)] == [10, 20, 30]


def test_remote_metrics_resume_drops_past_checkpoint_and_cut_lines(gcs, capsys):
    from etils import epath

    from jaxorder.training.metrics import MetricsWriter, read_metrics

    run = _unique("resume")
    w = MetricsWriter(run, 0, tensorboard=False)
    for step in (10, 20, 30):
        w.write(step, "train", {"loss": 1.0})
    w.close()
    (epath.Path(run) / "metrics" / "00000001.jsonl").write_text('{"step": 40, "spl\n')  # a cut object
    resumed = MetricsWriter(run, 20, tensorboard=False)
    assert [r["step"] for r in read_metrics(run)] == [10, 20]
    assert "dropped 1 unreadable line" in capsys.readouterr().err
    assert list(_objects(run)) == ["00000002-base.jsonl"]
    # a leftover older object (a kill between writing the base and deleting) stays hidden by the base
    (epath.Path(run) / "metrics" / "00000000.jsonl").write_text('{"step": 30, "split": "train"}\n')
    resumed.write(30, "train", {"loss": 0.5})
    resumed.close()
    assert [(r["step"], r.get("loss")) for r in read_metrics(run)] == [(10, 1.0), (20, 1.0), (30, 0.5)]
    assert resumed.last_value("train", "loss", -1.0) == 0.5


def test_remote_tensorboard_uploads_one_event_file_per_flush(gcs, tmp_path):
    from etils import epath

    from jaxorder.training.metrics import MetricsWriter

    run = _unique("tb")
    w = MetricsWriter(run, 0, tensorboard=True)
    w.write(10, "train", {"loss": 3.0})
    w.flush()
    w.write(20, "train", {"loss": 2.0})
    w.close()
    events = sorted((epath.Path(run) / "tensorboard").iterdir(), key=lambda p: p.name)
    assert len(events) == 2
    (tmp_path / "tensorboard").mkdir()
    for p in events:
        (tmp_path / "tensorboard" / p.name).write_bytes(p.read_bytes())
    assert read_tensorboard_scalars(tmp_path)["train/loss"] == [(10, 3.0), (20, 2.0)]


# ----------------------------------------------------------------------------- lock

def test_remote_run_lock(gcs, capsys):
    from etils import epath

    from jaxorder.training.run_lock import LOCK_NAME, RunLock

    run = _unique("lock")
    lock = epath.Path(run) / LOCK_NAME
    with RunLock(run):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(ConfigError, match="is in use by process .* delete gs://"):
            with RunLock(run):
                pass
    assert not lock.exists()  # released on exit
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with RunLock(run):  # a gone process of this host (kill -9): taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "took over the lock" in capsys.readouterr().err
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "started": 0}))
    with pytest.raises(ConfigError, match="another-host"):  # cannot tell: refuse, name the object
        with RunLock(run):
            pass


# ----------------------------------------------------------------------------- end to end

def _config(data_url: str, steps: int) -> str:
    return (f"include: ['{TINY_MODEL_YAML}']\n"
            f"model: {{d_model: 16, n_layers: 1, n_heads: 2}}\n"
            f"data: {{source: text, path: '{data_url}', seq_len: 32, batch_size: 8}}\n"
            f"optimizer: {{lr: 1.0e-2, warmup_steps: 5}}\n"
            f"train: {{steps: {steps}, log_every: 10, eval_every: 1000, checkpoint_every: 20, "
            f"async_checkpointing: false}}\n"
            f"eval: {{batches: 1}}\n")


@pytest.mark.slow
def test_train_kill_resume_eval_on_gcs(gcs, cli_env, tmp_path):
    """Data, run directory and TensorBoard on gs://: SIGKILL after the first checkpoint, resume
    (taking over the dead run's lock), finish, evaluate; metrics and events have every step once."""
    from etils import epath

    from jaxorder.training.metrics import read_metrics

    env = {**cli_env, **gcs}
    data = _unique("data")
    (epath.Path(data) / "doc.txt").write_text(SENTENCE * 64)
    run = _unique("run")
    steps = 120
    config = tmp_path / "gcs.yaml"
    config.write_text(_config(data, steps))
    proc = subprocess.Popen(cli_command("train", config, "--run-dir", run), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = epath.Path(run) / "checkpoints"
    deadline = time.time() + SUBPROCESS_TIMEOUT
    # object storage has no atomic rename: Orbax marks a finished checkpoint with commit_success.txt
    while not (checkpoints.is_dir() and any((p / "commit_success.txt").exists() for p in checkpoints.iterdir()
                                            if p.name.isdigit())):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (epath.Path(run) / "train.lock").exists()  # left behind by the kill

    resumed = run_cli(["train", config, "--run-dir", run], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint at step" in resumed.stderr
    assert "took over the lock" in resumed.stderr
    assert not (epath.Path(run) / "train.lock").exists()
    train_steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert train_steps == list(range(10, steps + 1, 10))  # every step once: nothing lost, nothing twice

    local = tmp_path / "tb_copy"
    (local / "tensorboard").mkdir(parents=True)
    for p in (epath.Path(run) / "tensorboard").iterdir():
        (local / "tensorboard" / p.name).write_bytes(p.read_bytes())
    tb_steps = sorted({s for s, _ in read_tensorboard_scalars(local)["train/loss"]})
    assert tb_steps == train_steps

    evaluated = run_cli(["eval", run], env, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "bits/byte" in evaluated.stdout
    sampled = run_cli(["sample", run, "--num-samples", "1", "--length", "16"], env, tmp_path)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
