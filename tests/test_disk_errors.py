"""Disk trouble ends in one line naming the fix, never a traceback: a full disk while saving a
checkpoint (the previous checkpoint stays restorable), a run directory that cannot be created."""
from __future__ import annotations

import errno
import shutil
import subprocess

import orbax.checkpoint as ocp
import pytest
from etils import epath

from jaxorder import cli
from jaxorder.evaluation.runs import load_params

from conftest import run_cli, step_dirs

# checkpoint every 5 steps: a tiny run's checkpoint is ~0.6 MB, so a 900 KB disk takes the first
# one and runs full during the second
DISK_RUN = ["train.steps=40", "train.checkpoint_every=5", "train.log_every=5", "train.eval_every=100"]


def _error_line(err: str) -> str:
    assert "Traceback" not in err and "ERROR:absl" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 900 KB tmpfs (needs root; skipped elsewhere: the injected test below covers the handling)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(small_disk, tmp_path,
                                                                                tiny_config_file, cli_env):
    run = small_disk / "run"
    done = run_cli(["train", tiny_config_file, "--run-dir", run, *DISK_RUN], cli_env, tmp_path)
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    # Which write meets the full disk first (a checkpoint array, its metadata, metrics) varies.
    assert "No space left on device" in line and "free disk space" in line
    assert step_dirs(run), "not even the first checkpoint was committed"
    moved = shutil.copytree(run, tmp_path / "freed")  # "free disk space": the run on a larger disk
    assert load_params(moved)[2] == step_dirs(run)[-1]


def test_an_injected_disk_full_error_while_saving(tmp_path, tiny_config_file, monkeypatch, capsys):
    original = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 10:  # what Orbax raises when tensorstore's write fails with ENOSPC
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"step/0\": Failed to write 2842 bytes to "
                             "file 9: No space left on device [os_error_code='28']")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    run = tmp_path / "run"
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(run), *DISK_RUN])
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and "No space left on device" in line, line
    assert step_dirs(run) == [5] and load_params(run)[2] == 5


def test_a_run_dir_under_a_file_is_one_line(tmp_path, tiny_config_file, capsys):
    (tmp_path / "afile").write_text("x")
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "afile" / "run")])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "a parent of it is a file" in line


def test_a_run_dir_without_write_permission_is_one_line(tmp_path, tiny_config_file, monkeypatch, capsys):
    def denied(self, *args, **kwargs):  # chmod does not stop root, so the refusal is injected
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(type(epath.Path(tmp_path)), "mkdir", denied)
    code = cli.main(["train", str(tiny_config_file), "--run-dir", str(tmp_path / "ro" / "run")])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "permission denied" in line


def test_background_reports_of_a_failed_write_are_dropped(caplog):
    """Orbax's failed background writes are also reported by asyncio ("exception was never
    retrieved", at garbage collection, possibly after the one-line error): those records are
    dropped like absl's; other asyncio records pass."""
    import logging

    from jaxorder.training.checkpoint import drop_background_os_error_logs

    drop_background_os_error_logs()
    failed = ValueError("RESOURCE_EXHAUSTED: Error writing: No space left on device [os_error_code='28']")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        logging.getLogger("asyncio").error("_GatheringFuture exception was never retrieved",
                                           exc_info=(ValueError, failed, None))
        logging.getLogger("asyncio").error("some other asyncio failure")
    assert [r.getMessage() for r in caplog.records] == ["some other asyncio failure"]
