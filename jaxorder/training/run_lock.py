"""One writer per run directory: an exclusive lock on RUN_DIR/train.lock while `train` runs.

The lock is a kernel `flock` on the file, so it is released when its process dies however it dies
(kill -9 included); the file itself stays behind and names the holder (pid, host, start time).
Finding such a file with the lock free means its writer is gone: the lock is taken over with a
warning.

Object storage (gs://) has no flock. There the lock is the object RUN_DIR/train.lock itself, created
only if absent (a create-only precondition, so two starts cannot both get it) and deleted on exit.
A kill -9 leaves it behind, and a dead holder cannot be told from a live one elsewhere: a lock
left by a process of this host that no longer runs is taken over with a warning; one held by
another host is a one-line error that names the object to delete once that run is known to be gone.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Any

from etils import epath

from jaxorder.config import ConfigError
from jaxorder.paths import is_url

LOCK_NAME = "train.lock"


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (started {started})"


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock (ConfigError if another process does)."""

    def __init__(self, run_dir: Any):
        self.run_dir = epath.Path(run_dir)
        self._fd: int | None = None
        self._remote: str | None = None  # the holder text of the lock object this process created

    def __enter__(self) -> "RunLock":
        if is_url(self.run_dir):
            self._remote = _take_remote(self.run_dir / LOCK_NAME, self.run_dir)
            return self
        path = os.fspath(self.run_dir / LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise ConfigError(f"run directory {self.run_dir} is in use by {_describe(holder)}; wait for it "
                              f"to finish, stop it, or use another --run-dir") from None
        stale = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if stale:
            print(f"warning: took over the lock of {self.run_dir} left by {_describe(stale)}, which is no "
                  f"longer running", file=sys.stderr, flush=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._remote is not None:
            _release_remote(self.run_dir / LOCK_NAME, self._remote)
            self._remote = None
        if self._fd is None:
            return
        # Emptied before unlocking: an empty file left by a clean exit is not reported as stale.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _me() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})


def _alive_here(holder: dict) -> bool:
    """Whether the holder may still run: True unless it is a process of this host that is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _take_remote(path: epath.Path, run_dir: epath.Path) -> str:
    """Creates the lock object if absent (create-only: at most one start wins); returns its text."""
    import fsspec

    fs, key = fsspec.core.url_to_fs(str(path))
    me = _me()
    try:
        # gcsfs: an upload with ifGenerationMatch=0, whose 412 is FileExistsError (open(mode="xb") of
        # gcsfs 2026.10 does not send the precondition)
        fs.pipe_file(key, me.encode(), mode="create")
        return me
    except FileExistsError:
        pass
    holder = _holder(path.read_text()) if path.exists() else {}
    if _alive_here(holder):
        raise ConfigError(f"run directory {run_dir} is in use by {_describe(holder)} ({path} exists); wait "
                          f"for it to finish, stop it, or use another --run-dir; if that run is gone, "
                          f"delete {path}") from None
    print(f"warning: took over the lock of {run_dir} left by {_describe(holder)}, which is no longer "
          f"running", file=sys.stderr, flush=True)
    path.write_text(me)
    return me


def _release_remote(path: epath.Path, mine: str) -> None:
    """Deletes the lock object if it still holds this process's text (a takeover may have replaced it)."""
    try:
        if path.read_text() == mine:
            path.unlink()
    except FileNotFoundError:
        pass
