"""Shared fixtures of the end-to-end tests (tests/test_train.py, tests/test_cli.py).

Everything here is tiny: a 2-layer, d_model=32 model on 32-token windows, batches of 8, a few
dozen steps, so a full training run is dominated by XLA compilation (~5 s on 2 CPU cores).
Subprocess runs share a JAX persistent compilation cache in the session's temp directory, so
the second process with the same config skips compilation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:  # the repo root, when pytest runs without the package installed
    import jaxorder  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pytest

from jaxorder.platform.host_memory import configure_host_malloc

configure_host_malloc()  # before any test creates JAX's CPU client (see jaxorder.platform.host_memory)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL_YAML = REPO / "configs" / "model" / "tiny.yaml"

# One 32-byte line = one window of data.seq_len=32: every training and validation window is the
# same text, so a model can drive the loss to ~0 (the overfit tests).
SENTENCE = "the cat sat on the mat, purring\n"
assert len(SENTENCE.encode()) == 32

# Dotted overrides that make any config tiny (used with config.load(None, ...) and on the CLI).
TINY = (
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
    "data.seq_len=32", "data.batch_size=8",
    "optimizer.lr=1e-2", "optimizer.warmup_steps=10",
    "train.log_every=10",
    "eval.batches=1", "eval.mdm_time_samples=2",
)

SUBPROCESS_TIMEOUT = 240  # seconds; a healthy tiny run takes < 20 s

# The subprocess tests all train the tiny l2r config for this many steps: the step count is part
# of the compiled train step (LR schedule), so sharing it lets them share the compilation cache.
# 400 steps of ~4 ms leave time to signal a run mid-training; fewer checkpoints keep it fast.
SUBPROCESS_STEPS = 400


# ----------------------------------------------------------------------------- corpora

def write_repeated_corpus(path: Path, lines: int = 64) -> Path:
    path.write_text(SENTENCE * lines)
    return path


_WORDS = ("the of and to in a is that it was he for on are as with his they at be this from "
          "have or by one had not but what all were when we there can an your which their said "
          "if do will each about how up out them then she many some so these would other into "
          "has more her two like him see time could no make than first been its who now people "
          "my made over did down only way find use may water long little very after words called "
          "just where most know king queen sword castle river night morning").split()


def write_text_corpus(directory: Path, n_docs: int = 3, lines: int = 120, seed: int = 0) -> Path:
    """A directory of pseudo-English documents (Zipf-distributed words; deterministic)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, len(_WORDS) + 1)
    probs /= probs.sum()
    for d in range(n_docs):
        out = []
        for _ in range(lines):
            words = rng.choice(_WORDS, size=int(rng.integers(6, 12)), p=probs)
            out.append(" ".join(words).capitalize() + ".\n")
        (directory / f"doc{d}.txt").write_text("".join(out))
    return directory


@pytest.fixture(scope="session")
def repeated_corpus(tmp_path_factory) -> Path:
    return write_repeated_corpus(tmp_path_factory.mktemp("repeated") / "cat.txt")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus") / "docs")


def tiny_config_yaml(data_path: Path, steps: int = 30, checkpoint_every: int = 10, eval_every: int = 20,
                     objective: str = "l2r") -> str:
    """An experiment YAML that includes the repo's configs/model/tiny.yaml and shrinks it."""
    return (f"include: ['{TINY_MODEL_YAML}']\n"
            f"model: {{d_model: 32, n_layers: 2, n_heads: 2}}\n"
            f"objective: {{name: {objective}}}\n"
            f"data: {{source: text, path: '{data_path}', seq_len: 32, batch_size: 8}}\n"
            f"optimizer: {{lr: 1.0e-2, warmup_steps: 10}}\n"
            f"train: {{steps: {steps}, log_every: 10, eval_every: {eval_every}, "
            f"checkpoint_every: {checkpoint_every}}}\n"
            f"eval: {{batches: 1, mdm_time_samples: 2}}\n")


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory, text_corpus) -> Path:
    """configs-style experiment file: tiny l2r on the pseudo-English corpus, 30 steps, ckpt every 10."""
    path = tmp_path_factory.mktemp("configs") / "tiny_l2r.yaml"
    path.write_text(tiny_config_yaml(text_corpus))
    return path


# ----------------------------------------------------------------------------- a finished run

@dataclass
class FinishedRun:
    run_dir: Path
    config_path: Path
    result: dict
    stderr: str

    def copy_to(self, dst: Path) -> Path:
        shutil.copytree(self.run_dir, dst)
        return dst


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_config_file) -> FinishedRun:
    """A finished 30-step l2r run (checkpoints at 10, 20, 30; val at 20, 30). Read-only: copy it to mutate."""
    from jaxorder import config as config_lib
    from jaxorder.training.loop import train

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    cfg = config_lib.load(tiny_config_file)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = train(cfg, run_dir)
    return FinishedRun(run_dir, tiny_config_file, result, err.getvalue())


# ----------------------------------------------------------------------------- subprocesses

@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict:
    """Environment of `jaxorder` subprocesses: CPU, a shared persistent compilation cache."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, whatever other test modules set in-process
    env.update({
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxorder.cli", *map(str, args)]


def run_cli(args, env: dict, cwd: Path, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- run-dir helpers

def train_on_corpus(run_dir: Path, overrides, corpus: Path, steps: int = 3):
    """Trains a tiny run for `steps` steps on a text corpus, quietly; returns its config."""
    from jaxorder import config as config_lib
    from jaxorder.training.loop import train

    cfg = config_lib.load(None, (*overrides, "data.source=text", f"data.path={corpus}", "data.batch_size=8",
                                 f"train.steps={steps}", f"train.eval_every={steps}",
                                 f"train.checkpoint_every={steps}", "train.async_checkpointing=false",
                                 "eval.batches=1"))
    with contextlib.redirect_stderr(io.StringIO()):
        train(cfg, run_dir)
    return cfg


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory, text_corpus):
    """objective -> the run directory of a tiny run of it on the text corpus (l2r 20 steps, others
    10), trained once per session and shared by the tests of exports and scoring. Read-only."""
    runs: dict[str, Path] = {}

    def get(objective: str) -> Path:
        if objective not in runs:
            run_dir = tmp_path_factory.mktemp(f"tiny_{objective}") / "run"
            train_on_corpus(run_dir, (*TINY, f"objective.name={objective}"), text_corpus,
                            steps=20 if objective == "l2r" else 10)
            runs[objective] = run_dir
        return runs[objective]

    return get


def cli_in_process(argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `jaxorder ARGV` run in this process (shares compilations)."""
    from jaxorder.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def step_dirs(run_dir: Path) -> list[int]:
    """Finished checkpoint steps of a run directory (Orbax renames tmp dirs to the step at commit)."""
    ckpt = Path(run_dir) / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def read_tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every TensorBoard event file of a run (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            record = data[i + 12:i + 12 + length]
            i += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


# ----------------------------------------------------------------------------- samplers
# Tests name a sampler and its options as a pair (name, SamplerOptions) and run it through the one
# lifecycle, jaxorder.sampling.sample.

def spec(name: str, **options) -> tuple:
    from jaxorder.sampling import SamplerOptions

    return name, SamplerOptions(**options)


def with_options(sampler_spec: tuple, **changes) -> tuple:
    return sampler_spec[0], dataclasses.replace(sampler_spec[1], **changes)


def run_sampler(params, cfg, tokens_BL, key, sampler_spec: tuple) -> dict:
    from jaxorder import sampling

    return sampling.sample(params, cfg, tokens_BL, key, sampler_spec[0], sampler_spec[1])


def ar_rows(cfg, prompts, max_new: int) -> np.ndarray:
    """Rows [B, max prompt + max_new] for AR sampling: prompt, max_new MASKs, PAD (in reading order:
    runs generating right to left get MASKs, then the prompt as the end, with PAD in front)."""
    from jaxorder import objectives
    from jaxorder.objectives.common import special_ids

    ids = special_ids(cfg.model)
    rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    L = max(len(r) for r in rows) + max_new
    out = np.full((len(rows), L), ids.pad, np.int32)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r[::-1] if objectives.of(cfg).reading_order == "r2l" else r
        out[b, len(r):len(r) + max_new] = ids.mask
    return out[:, ::-1].copy() if objectives.of(cfg).reading_order == "r2l" else out
