"""A run directory's identity: its saved config, which changes a resume may make, and its history.

The saved config binds the directory once a checkpoint exists. Keys that do not change what a
step computes (logging, evaluation and checkpoint cadence, the mesh, ...) may change on resume,
and so may `train.steps` (continuing a finished run); each start is recorded in history.jsonl.
"""
from __future__ import annotations

import json
import time

from etils import epath

from jaxorder import config as config_lib
from jaxorder.config import Config, ConfigError
from jaxorder.platform.distributed import barrier, is_main_process

# Fields that may change when a run directory is resumed. A checkpoint restores onto any mesh, so
# mesh and process layout may change too. train.steps may grow (never below the newest checkpoint):
# the learning-rate schedule is then re-derived from the new total for the remaining steps.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.max_to_keep", "train.async_checkpointing", "train.max_bad_steps", "eval.",
                     "mesh.", "distributed.", "data.num_workers", "model.attention_impl",
                     "model.backward_rewrites", "logging.", "train.peak_tflops", "profile.", "compile.",
                     "train.stop_at", "train.restarts", "train.restart_steps")
HISTORY = "history.jsonl"


def make_run_dir(run_dir: epath.Path) -> None:
    """Creates the run directory (and its parents)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory; choose another path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--run-dir {run_dir} cannot be created: a parent of it is a file; "
                          f"choose another path") from None
    except PermissionError:
        raise ConfigError(f"--run-dir {run_dir} cannot be created: permission denied; choose a "
                          f"writable path") from None


def checkpoint_steps(run_dir: epath.Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def prepare_run_dir(cfg: Config, run_dir: epath.Path) -> list[str]:
    """Checks that the directory's checkpoints were made with a compatible config and saves `cfg`.

    Returns the allowed changes against the saved config ('key: old -> new'). The saved config
    binds the directory only once a checkpoint exists: a start that failed before training (say, a
    wrong data path) may be re-run with the corrected settings.
    """
    make_run_dir(run_dir)
    saved_path = run_dir / "config.yaml"
    steps = checkpoint_steps(run_dir)
    changes: list[str] = []
    if saved_path.exists() and steps:
        try:
            saved = config_lib.load_saved(saved_path)
        except ConfigError as e:
            raise ConfigError(f"{saved_path} is not a valid jaxorder config "
                              f"({e}); use a new --run-dir") from None
        changes = config_lib.diff(saved, cfg)
        conflicts = [d for d in changes if not d.startswith(RESUMABLE_CHANGES)]
        if conflicts:
            raise ConfigError(f"run directory {run_dir} was made with a different config "
                              f"({'; '.join(conflicts)}); use a new --run-dir or the same settings to resume")
        if cfg.train.steps < steps[-1]:
            raise ConfigError(f"train.steps={cfg.train.steps} is below the newest checkpoint of {run_dir} "
                              f"(step {steps[-1]}); set train.steps >= {steps[-1]} to resume or continue it")
    # Every process has read the saved config (and the caller the tokenizer) before process 0 rewrites them.
    barrier("jaxorder: run directory checked")
    if is_main_process():
        config_lib.save(cfg, saved_path)
    return changes


def record_start(run_dir: epath.Path, changes: list[str]) -> None:
    """Appends this start (time, newest checkpoint, config changes allowed on resume) to history.jsonl."""
    steps = checkpoint_steps(run_dir)
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_step": steps[-1] if steps else 0,
             "changes": changes}
    path = run_dir / HISTORY
    previous = path.read_text() if path.exists() else ""
    path.write_text(previous + json.dumps(entry) + "\n")  # rewritten whole: gs:// cannot append


def read_history(run_dir: epath.Path) -> list[dict]:
    path = epath.Path(run_dir) / HISTORY
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
