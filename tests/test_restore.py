"""Restore tells a damaged newest checkpoint (fall back to the previous one, one warning line) from
every other failure (stop with one line, move nothing)."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from jaxorder import cli
from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.training.checkpoint import Checkpointer
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import make_placement

from conftest import run_cli, step_dirs


def _zero_array_chunks(step_dir: Path) -> None:
    """Damages only the array data (the metadata still reads): the case that made tensorstore reads
    in flight print dozens of 'Event loop is closed' tracebacks."""
    chunks = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert chunks
    for p in chunks:
        p.write_bytes(b"\0" * (p.stat().st_size // 2))


def _moved_aside(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("corrupt_checkpoint_"))


def test_damaged_newest_checkpoint_falls_back_with_one_warning_line(tmp_path, finished_run, cli_env):
    run = finished_run.copy_to(tmp_path / "run")
    _zero_array_chunks(run / "checkpoints" / "30")
    done = run_cli(["eval", run, "--json"], cli_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == 20
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint at step 30"), done.stderr
    assert "previous checkpoint (step 20)" in lines[0]
    assert step_dirs(run) == [10, 20] and len(_moved_aside(run)) == 1


def test_a_model_that_does_not_fit_stops_and_moves_nothing(tmp_path, finished_run):
    run = finished_run.copy_to(tmp_path / "run")
    cfg = config_lib.load(finished_run.config_path, ["model.d_model=64"])
    optimizer = make_optimizer(cfg)
    placement = make_placement(cfg, optimizer)
    ckpt = Checkpointer(run / "checkpoints", 3, async_save=False)
    try:
        with pytest.raises(ConfigError) as exc:
            ckpt.restore_latest(placement.abstract_state(cfg, optimizer))
    finally:
        ckpt.close()
    message = str(exc.value)
    assert "\n" not in message and "step 30" in message
    assert "another model config" in message and "nothing was moved" in message
    assert step_dirs(run) == [10, 20, 30] and _moved_aside(run) == []


@pytest.mark.parametrize("error, expected", [
    (PermissionError(errno.EACCES, "Permission denied"), "check the permissions"),
    (ValueError("UNAVAILABLE: connection reset by peer"), "retry"),
    (OSError(errno.EIO, "Input/output error"), "the storage failed (EIO)"),
])
def test_a_failure_that_is_not_damage_stops_with_one_line(error, expected, tmp_path, finished_run,
                                                          monkeypatch, capsys):
    run = finished_run.copy_to(tmp_path / "run")

    def failing_restore(self, step, *args, **kwargs):
        raise error

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
    code = cli.main(["eval", str(run)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "step 30" in lines[0] and expected in lines[0] and "nothing was moved" in lines[0]
    assert step_dirs(run) == [10, 20, 30] and _moved_aside(run) == []
