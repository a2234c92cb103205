"""Progress bars: drawn (rate, ETA) when stderr is a terminal, absent in logs and CI, where log lines
stay plain; JAXORDER_PROGRESS forces either way."""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

from jaxorder.platform import progress

SCRIPT = ("from jaxorder.platform import progress\n"
          "for i in progress.track(range(3), 'train', unit='step'):\n"
          "    progress.write(f'log line {i}')\n")


def _stderr_of(script: str, env: dict) -> str:
    """stderr of `python -c script` with stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=slave, stdout=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_bar_with_rate_and_log_lines_intact():
    env = {k: v for k, v in os.environ.items() if k != "JAXORDER_PROGRESS"} | {"JAX_PLATFORMS": "cpu"}
    out = _stderr_of(SCRIPT, env)
    assert "train: 100%" in out and "3/3" in out and "step/s" in out
    assert all(f"log line {i}\r\n" in out or f"log line {i}\n" in out for i in range(3))


def test_no_terminal_no_bar_only_plain_lines(monkeypatch):
    monkeypatch.delenv("JAXORDER_PROGRESS", raising=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert not progress.enabled()
        for i in progress.track(range(3), "train", unit="step"):
            progress.write(f"log line {i}")
    assert err.getvalue() == "log line 0\nlog line 1\nlog line 2\n"


def test_jaxorder_progress_forces_bars_on_and_off(monkeypatch):
    monkeypatch.setenv("JAXORDER_PROGRESS", "1")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        list(progress.track(range(2), "eval", unit="batch"))
    assert "eval: 100%" in err.getvalue() and "2/2" in err.getvalue()
    monkeypatch.setenv("JAXORDER_PROGRESS", "0")
    assert not progress.enabled()
