"""What a training run reports about itself besides its loss: step time, tokens/s and MFU
(`StepClock`, `Throughput`), a profiler trace of chosen steps (`ProfileWindow`), and a copy of
the log lines in RUN_DIR/logs/train.log (`run_log`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import jax
from etils import epath

from jaxorder.config import Config, ProfileConfig
from jaxorder.platform import flops
from jaxorder.platform.distributed import LOG_MIRROR, is_main_process, log


class StepClock:
    """Wall time spent in training steps, per window between two log lines.

    Starts after the first (compiling) step; time inside `excluded()` (checkpoints, evaluation)
    is left out, after waiting for the steps already dispatched so that their time stays in."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._steps = 0
        self._excluded = 0.0

    def start(self, *arrays: Any) -> None:
        jax.block_until_ready(arrays)
        self._start, self._steps, self._excluded = time.perf_counter(), 0, 0.0

    def step(self) -> None:
        if self._start is not None:
            self._steps += 1

    @contextlib.contextmanager
    def excluded(self, *arrays: Any) -> Iterator[None]:
        jax.block_until_ready(arrays)
        t = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - t

    def window(self) -> tuple[int, float]:
        """(steps, seconds) since the last window (the caller has blocked on the last step's
        result); the next window starts now."""
        if self._start is None:
            return 0, 0.0
        now = time.perf_counter()
        steps, seconds = self._steps, now - self._start - self._excluded
        self._start, self._steps, self._excluded = now, 0, 0.0
        return steps, seconds


@dataclass(frozen=True)
class Throughput:
    tokens_per_step: int
    flops_per_token: float
    peak_tflops: float | None  # per device; None = unknown (MFU omitted)
    n_devices: int

    def values(self, steps: int, seconds: float) -> dict[str, float]:
        """step_seconds, tokens_per_s and (with a known peak) mfu of a window; {} without steps."""
        if steps < 1 or seconds <= 0:
            return {}
        out = {"step_seconds": seconds / steps, "tokens_per_s": steps * self.tokens_per_step / seconds}
        if self.peak_tflops:
            out["mfu"] = flops.mfu(out["tokens_per_s"], self.flops_per_token, self.peak_tflops,
                                   self.n_devices)
        return out


def make_throughput(cfg: Config, params: dict, n_devices: int, device_kind: str) -> tuple[Throughput, str]:
    """The run's Throughput and a one-line note on where the peak comes from (or why MFU is off)."""
    fpt = flops.flops_per_token(cfg.model, cfg.data.seq_len, flops.matmul_params(params))
    if cfg.train.peak_tflops:
        peak, note = cfg.train.peak_tflops, f"train.peak_tflops={cfg.train.peak_tflops:g}"
    else:
        peak = flops.detected_peak_tflops(device_kind)
        note = (f"{peak:g} TFLOP/s per '{device_kind}' device" if peak else
                f"MFU not logged: no peak FLOP/s known for '{device_kind}' devices; set "
                f"train.peak_tflops=TFLOPS_PER_DEVICE")
    tokens = cfg.data.batch_size * cfg.data.seq_len
    return Throughput(tokens, fpt, peak, n_devices), f"{fpt / 1e6:.3g} MFLOP/token; {note}"


def format_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def speed_text(values: dict[str, float]) -> str:
    """' | 12.3 ms/step | 4.5k tok/s | MFU 31.2%' from Throughput.values ('' when empty)."""
    if "step_seconds" not in values:
        return ""
    text = f" | {values['step_seconds'] * 1e3:.1f} ms/step | {format_rate(values['tokens_per_s'])} tok/s"
    return text + (f" | MFU {values['mfu'] * 100:.1f}%" if "mfu" in values else "")


class ProfileWindow:
    """A jax.profiler trace of steps start_step .. start_step + steps - 1 into RUN_DIR/profile/."""

    def __init__(self, cfg: ProfileConfig, run_dir: epath.Path) -> None:
        self.first, self.last = cfg.start_step, cfg.start_step + cfg.steps - 1
        self.enabled = cfg.steps > 0 and is_main_process()  # one trace, from process 0
        self.path = run_dir / "profile"
        self.active = False

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.first:
            self.path.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.path))
            self.active = True

    def after_step(self, step: int, result: Any) -> None:
        if self.active and step == self.last:
            jax.block_until_ready(result)  # the trace must hold the steps' device work, not just dispatch
            self.close()
            log(f"profile of steps {self.first}-{self.last} written to {self.path}")

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


class _RunLogHandler(logging.Handler):
    """Appends each log line to a local file; a remote one (gs://, no appends) is rewritten."""

    def __init__(self, path: epath.Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.remote = "://" in str(path)
        self.text = path.read_text() if self.remote and path.exists() else ""

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage() + "\n"
        if self.remote:
            self.text += line
            self.path.write_text(self.text)
        else:
            with open(self.path, "a") as f:
                f.write(line)


@contextlib.contextmanager
def run_log(run_dir: epath.Path) -> Iterator[None]:
    """While open, process 0's log lines are also appended to RUN_DIR/logs/train.log."""
    if not is_main_process():
        yield
        return
    path = run_dir / "logs" / "train.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(LOG_MIRROR)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the line is already on stderr
    handler = _RunLogHandler(path)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
