"""One writer per run directory: an exclusive lock on RUN_DIR/train.lock while `train` runs.

The lock is a kernel `flock` on the file, so it is released when its process dies however it dies
(kill -9 included); the file itself stays behind and names the holder (pid, host, start time).
Finding such a file with the lock free means its writer is gone: the lock is taken over with a
warning. Remote run directories (gs://) cannot be flocked and are not locked.
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

    def __enter__(self) -> "RunLock":
        if "://" in str(self.run_dir):
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
        if self._fd is None:
            return
        # Emptied before unlocking: an empty file left by a clean exit is not reported as stale.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
