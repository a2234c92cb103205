"""Orbax checkpoints of a run: train state, grain iterator state and the config, async, with fallback.

A checkpoint step directory holds three items: `state` (params, optimizer state, step),
`data` (the grain iterator state) and `config` (the resolved config as JSON). If the newest
checkpoint cannot be restored, it is moved aside (renamed, never deleted) and the previous one
is used, with a warning.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxorder.config import ConfigError
from jaxorder.data.iterator_state import restore_iterator
from jaxorder.platform.distributed import barrier, is_main_process
from jaxorder.training.restore_errors import first_line, not_damage_hint, silence_closed_loop_noise

ITEMS = ("state", "data", "config")
OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_restore_logs():
    """Orbax logs a failed read as an absl ERROR/WARNING with a traceback before raising, and the
    reads it abandons report their errors again when garbage-collected (asyncio 'exception was
    never retrieved'; their coroutine finalizers: restore_errors.silence_closed_loop_noise); the
    caller reports the failure itself in one line, so those reports are dropped while it tries."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        gc.collect()  # the abandoned reads report when collected: collect them while quiet
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _OsErrorRecords(logging.Filter):
    """Drops records of an OS-level write failure (disk full, ...) in Orbax's save threads: absl's
    error reports, and asyncio's "exception was never retrieved" for the gathered writes that
    failed alongside (logged when they are garbage-collected, possibly after the error line). The
    same failure is raised again in the main thread (save or wait), which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        return OS_ERROR_CODE.search(text) is None


def drop_background_os_error_logs() -> None:
    for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
        if not any(isinstance(f, _OsErrorRecords) for f in logger.filters):
            logger.addFilter(_OsErrorRecords())


@contextlib.contextmanager
def save_errors_as_os_errors(directory: Any):
    """Orbax reports a failed write as ValueError("... [os_error_code='28']"); re-raised as the
    OSError it is, so the command line names the cause (disk full) and the fix in one line."""
    try:
        yield
    except ValueError as e:
        match = OS_ERROR_CODE.search(str(e))
        if match is None:
            raise
        code = int(match.group(1))
        raise OSError(code, f"{os.strerror(code)} while writing a checkpoint", str(directory)) from None


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the run's item layout."""

    def __init__(self, directory: Any, max_to_keep: int, async_save: bool = True):
        drop_background_os_error_logs()
        directory = epath.Path(directory)
        self.directory = (directory if str(directory).startswith("gs://")
                          else epath.Path(os.path.abspath(directory)))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                 enable_async_checkpointing=async_save,
                                                 create=True),
            item_names=ITEMS,
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any, config_dict: dict, force: bool = False) -> bool:
        with save_errors_as_os_errors(self.directory):
            return self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=grain.checkpoint.CheckpointSave(iterator),
                                        config=ocp.args.JsonSave(config_dict)),
                force=force,
            )

    def restore_latest(self, abstract_state: Any, iterator: Any = None) -> tuple[int, Any] | None:
        """Restores the newest readable checkpoint (and `iterator`'s position, if given).

        Returns (step, state), or None when there are no checkpoints. Damaged checkpoints newer
        than the one restored are moved aside with one warning line each. A failure that is not
        damage (permissions, storage, memory, a model that does not fit the stored arrays; see
        restore_errors.py) stops with a ConfigError and moves nothing, as does finding no readable one.
        """
        failures: list[tuple[int, str]] = []
        silence_closed_loop_noise()  # the noise starts while a damaged restore is still running
        for step in reversed(self.steps()):
            # The exception is reduced to strings inside the quiet block, so that the traceback (which
            # keeps the abandoned reads alive) is gone when the block's gc.collect runs.
            hint = reason = None
            with quiet_restore_logs():
                try:
                    restored = self.manager.restore(
                        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
                except Exception as e:  # noqa: BLE001 - classified: damage falls back, the rest stops
                    hint, reason = not_damage_hint(e), first_line(e)
            if hint is not None:
                raise ConfigError(f"could not restore the checkpoint at step {step} in {self.directory} "
                                  f"({reason}); {hint}; nothing was moved")
            if reason is not None:
                failures.append((step, reason))
                continue
            if iterator is not None:  # read directly, so another process count can resume (DataError if not)
                restore_iterator(iterator, self.directory / str(step) / "data", jax.process_index(),
                                 jax.process_count())
            if failures:  # one process renames (every process would rename the same directory)
                if is_main_process():
                    for bad_step, reason in failures:
                        aside = self._move_aside(bad_step)
                        warn(f"checkpoint at step {bad_step} could not be restored ({reason}); moved it "
                             f"to {aside.name} and fell back to the previous checkpoint (step {step})")
                barrier("jaxorder: damaged checkpoints moved aside")
                self.manager.reload()
            return step, restored["state"]
        if failures:
            step, reason = failures[0]
            raise ConfigError(f"no checkpoint in {self.directory} could be restored (newest, step {step}: "
                              f"{reason}); were they written with a different model "
                              f"config? use a new --run-dir")
        return None

    def _move_aside(self, step: int) -> epath.Path:
        src = self.directory / str(step)
        dst = self.directory.parent / f"corrupt_checkpoint_{step}_{time.time_ns()}"
        if src.exists():
            src.rename(dst)
        return dst

    def saved_config(self) -> dict | None:
        steps = self.steps()
        if not steps:
            return None
        try:
            return self.manager.restore(steps[-1],
                                        args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception:  # noqa: BLE001
            return None

    def wait(self) -> None:
        with save_errors_as_os_errors(self.directory):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def require_checkpoint(run_dir: Any) -> epath.Path:
    ckpt_dir = epath.Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        raise ConfigError(f"{run_dir} has no checkpoints; train it first with `jaxorder train CONFIG "
                          f"--run-dir {run_dir}`")
    return ckpt_dir
