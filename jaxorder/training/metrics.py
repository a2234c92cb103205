"""Run metrics: metrics.jsonl (one JSON object per line) and TensorBoard event files.

Local run dirs append to metrics.jsonl; remote ones (gs://, where objects cannot be appended to)
rewrite it at each write. TensorBoard events are written for local run dirs only.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from etils import epath


def _is_remote(path: epath.Path) -> bool:
    return "://" in str(path)


class MetricsWriter:
    """Appends metrics; `enabled=False` (processes other than 0) makes every call a no-op."""

    def __init__(self, run_dir: Any, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True,
                 trackers: Sequence[Any] = ()):
        """`trackers`: objects with log(step, split, values), summary(values), close() (e.g.
        trackers.WandbTracker) that get every record after metrics.jsonl has it."""
        self.path = epath.Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = list(trackers)
        if not enabled:
            return
        self._lines = self._drop_after(resume_step)
        self._remote = _is_remote(self.path)
        self._file = None if self._remote else open(self.path, "a")
        self._tb = None
        if not self._remote and tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: it pulls in protobuf
            self._tb = SummaryWriter(str(epath.Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def _drop_after(self, step: int) -> list[str]:
        """Entries past the restored checkpoint are recomputed on resume, so they are dropped, as are
        lines that do not parse (the last line of a writer killed mid-write), with one warning."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = [(line, _parse(line)) for line in lines]
        broken = sum(record is None for _, record in records)
        if broken:
            print(f"warning: dropped {broken} unreadable line(s) of {self.path} (a writer stopped "
                  f"mid-line); their steps are recomputed", file=sys.stderr, flush=True)
        kept = [line for line, record in records if record is not None and record.get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
        return kept

    def last_value(self, split: str, key: str, default: float) -> float:
        """The newest value of `key` among the kept `split` records (e.g. cumulative wall time);
        `default` on the processes that do not write (they would read the file while process 0
        repairs it, and they report nothing)."""
        if not self.enabled:
            return default
        values = [r[key] for r in read_metrics(self.path.parent) if r.get("split") == split and key in r]
        return values[-1] if values else default

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, "split": split, **values})
        self._lines.append(line)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self.path.write_text("".join(x + "\n" for x in self._lines))
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
        for tracker in self.trackers:
            tracker.log(step, split, values)

    def summary(self, values: dict) -> None:
        """The run's final results (the yardstick) for the trackers; metrics.jsonl has them as `val`."""
        if self.enabled:
            for tracker in self.trackers:
                tracker.summary(values)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        for tracker in self.trackers:
            tracker.close()


def read_metrics(run_dir: Any) -> list[dict]:
    path = epath.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [_parse(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r is not None]


def _parse(line: str) -> dict | None:
    """A metrics record, or None for a line cut short (no exception: a killed writer is expected)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
