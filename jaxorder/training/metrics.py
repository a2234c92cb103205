"""Run metrics: metrics.jsonl (one JSON object per line) and TensorBoard event files.

Writing costs O(1) per record wherever the run directory is, so a run's metrics cost time linear
in its number of lines:
- a local run directory appends each line to metrics.jsonl and flushes it (a kill -9 can leave a
  cut last line, dropped on resume);
- a remote one (gs://...: objects cannot be appended to) keeps the lines since the last flush in
  memory and writes them as a new object `metrics/NNNNNNNN.jsonl` at every `flush()` (each
  checkpoint save), at most `REMOTE_FLUSH_SECONDS` apart and at close. Lines lost by a kill were
  past the newest checkpoint, so a resume would have dropped them anyway. TensorBoard events are
  written to a local temporary directory and uploaded as one event file per flush.
On resume, lines past the restored checkpoint (and cut lines) are dropped: locally by rewriting
metrics.jsonl, remotely by writing the kept lines as a new `NNNNNNNN-base.jsonl` object, which
hides every older object (they are deleted after it is written; readers ignore leftovers).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

from etils import epath

from jaxorder.paths import is_url

REMOTE_FLUSH_SECONDS = 60.0
PARTS = "metrics"  # the folder of a remote run directory's metrics objects
BASE = "-base"


class _Parts:
    """The metrics objects of a remote run directory: `NNNNNNNN.jsonl` and `NNNNNNNN-base.jsonl`."""

    def __init__(self, run_dir: epath.Path):
        self.dir = run_dir / PARTS
        self.legacy = run_dir / "metrics.jsonl"  # remote runs from before the parts were rewritten whole

    def listing(self) -> list[epath.Path]:
        """The objects that count, oldest first: from the newest base on."""
        parts = sorted((p for p in self.dir.iterdir() if p.name.endswith(".jsonl")), key=lambda p: p.name) \
            if self.dir.is_dir() else []
        bases = [i for i, p in enumerate(parts) if p.name.endswith(BASE + ".jsonl")]
        return parts[bases[-1]:] if bases else parts

    def read_lines(self) -> list[str]:
        listing = self.listing()
        if not listing:
            return self.legacy.read_text().splitlines() if self.legacy.exists() else []
        return [line for p in listing for line in p.read_text().splitlines()]

    def next_seq(self) -> int:
        names = [p.name for p in self.dir.iterdir()] if self.dir.is_dir() else []
        return 1 + max((int(n[:8]) for n in names if n[:8].isdigit()), default=-1)

    def write(self, seq: int, lines: list[str], base: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{seq:08d}{BASE if base else ''}.jsonl").write_text("".join(x + "\n" for x in lines))

    def drop_before(self, seq: int) -> None:
        """Deletes the objects a base at `seq` hides (garbage only: readers already skip them)."""
        for p in self.dir.iterdir():
            if p.name[:8].isdigit() and int(p.name[:8]) < seq:
                p.unlink(missing_ok=True)
        self.legacy.unlink(missing_ok=True)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported lazily (it pulls in protobuf) and without torch.

    tensorboardX imports torch at module load only to accept torch tensors, which jaxorder never
    logs; with torch installed (the [hf] extra) that import is most of a run's start-up time. The
    None entry makes its optional `import torch` fail for the duration of this import only."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends metrics; `enabled=False` (processes other than 0) makes every call a no-op."""

    def __init__(self, run_dir: Any, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True,
                 trackers: Sequence[Any] = ()):
        """`trackers`: objects with log(step, split, values), summary(values), close() (e.g.
        trackers.WandbTracker) that get every record after metrics.jsonl has it."""
        self.run_dir = epath.Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = list(trackers)
        if not enabled:
            return
        self._remote = is_url(self.run_dir)
        self._parts = _Parts(self.run_dir) if self._remote else None
        self._seq = self._parts.next_seq() if self._parts else 0
        self._drop_after(resume_step)
        self._pending: list[str] = []  # remote: lines not yet in an object
        self._flushed_at = time.monotonic()
        self._file = None if self._remote else open(self.path, "a")
        self._tb = None
        self._tb_local: str | None = None  # remote: where events wait for their upload
        self._tb_written = False
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            self._summary_writer = SummaryWriter
            if self._remote:
                self._tb_local = tempfile.mkdtemp(prefix="jaxorder-tb-")
            self._tb = SummaryWriter(self._tb_local or str(self.run_dir / "tensorboard"),
                                     purge_step=resume_step + 1)

    def _read_lines(self) -> list[str]:
        if self._parts is not None:
            return self._parts.read_lines()
        return self.path.read_text().splitlines() if self.path.exists() else []

    def _drop_after(self, step: int) -> None:
        """Entries past the restored checkpoint are recomputed on resume, so they are dropped, as are
        lines that do not parse (the last line of a writer killed mid-write), with one warning."""
        lines = [line for line in self._read_lines() if line.strip()]
        if not lines and not self.path.exists():
            return
        records = [(line, _parse(line)) for line in lines]
        broken = sum(record is None for _, record in records)
        if broken:
            print(f"warning: dropped {broken} unreadable line(s) of {self.path} (a writer stopped "
                  f"mid-line); their steps are recomputed", file=sys.stderr, flush=True)
        kept = [line for line, record in records if record is not None and record.get("step", 0) <= step]
        if self._parts is None:
            self.path.write_text("".join(line + "\n" for line in kept))
        else:
            self._parts.write(self._seq, kept, base=True)
            self._parts.drop_before(self._seq)
            self._seq += 1

    def last_value(self, split: str, key: str, default: float) -> float:
        """The newest value of `key` among the kept `split` records (e.g. cumulative wall time);
        `default` on the processes that do not write (they would read the file while process 0
        repairs it, and they report nothing)."""
        if not self.enabled:
            return default
        values = [r[key] for r in read_metrics(self.run_dir) if r.get("split") == split and key in r]
        return values[-1] if values else default

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, "split": split, **values})
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._pending.append(line)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
                    self._tb_written = True
        for tracker in self.trackers:
            tracker.log(step, split, values)
        if self._remote and time.monotonic() - self._flushed_at > REMOTE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Remote run dirs: the pending lines become a new object, the pending events a new event file."""
        if not self.enabled or not self._remote:
            return
        self._flushed_at = time.monotonic()
        if self._pending:
            self._parts.write(self._seq, self._pending)
            self._pending = []
        if self._tb is not None and self._tb_written:
            self._tb.close()  # an event file is complete once closed; the next flush starts a new one
            remote = self.run_dir / "tensorboard"
            remote.mkdir(parents=True, exist_ok=True)
            for f in epath.Path(self._tb_local).iterdir():
                # one name per flush, in write order: TensorBoard reads a directory's files sorted by name
                name = f"events.out.tfevents.{int(time.time()):010d}.{self._seq:08d}.jaxorder"
                (remote / name).write_bytes(f.read_bytes())
                f.unlink()
            self._tb = self._summary_writer(self._tb_local)
            self._tb_written = False
        self._seq += 1

    def summary(self, values: dict) -> None:
        """The run's final results (the yardstick) for the trackers; metrics.jsonl has them as `val`."""
        if self.enabled:
            for tracker in self.trackers:
                tracker.summary(values)

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._tb_local is not None:
            shutil.rmtree(self._tb_local, ignore_errors=True)
        for tracker in self.trackers:
            tracker.close()


def read_metrics(run_dir: Any) -> list[dict]:
    """The records of a run directory, local (metrics.jsonl) or remote (its `metrics/` objects)."""
    run_dir = epath.Path(run_dir)
    parts = _Parts(run_dir)
    if parts.dir.is_dir():
        lines = parts.read_lines()
    else:
        path = run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
    records = [_parse(line) for line in lines if line.strip()]
    return [r for r in records if r is not None]


def _parse(line: str) -> dict | None:
    """A metrics record, or None for a line cut short (no exception: a killed writer is expected)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
