"""Runs the `jaxorder` command line and kills its own process (SIGKILL) in the middle of a write.

Usage: python kill_during.py SITE N ARGS...   (ARGS as for `jaxorder`)

SITE is where the N-th call of this process is cut short, half written:
  iterator-save  the grain data-iterator state file of a checkpoint (Orbax's save of the `data` item)
  metrics-write  a `train` line of metrics.jsonl
The kill is SIGKILL, as from the kernel's OOM killer or a lost host: no handler, no cleanup runs.
Used by tests/test_kill_resume.py for the kill points that cannot be reached by watching files."""
from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_iterator_save(n: int) -> None:
    from grain._src.python.checkpoint import handler

    original = handler.CheckpointHandler.save
    calls = [0]

    def save(self, directory, item=None, args=None):
        calls[0] += 1
        if calls[0] < n:
            return original(self, directory, item=item, args=args)
        iterator = item or args.item
        import json
        text = json.dumps(iterator.get_state(), indent=4)
        (directory / "process_0-of-1.json").write_text(text[: len(text) // 2])
        _die()

    handler.CheckpointHandler.save = save


def _kill_in_metrics_write(n: int) -> None:
    from jaxorder.training import metrics

    original = metrics.MetricsWriter.write
    calls = [0]

    def write(self, step, split, values):
        if split == "train":
            calls[0] += 1
            if calls[0] >= n:
                line = metrics.json.dumps({"step": step, "split": split, **values})
                self._file.write(line[: len(line) // 2])
                self._file.flush()
                _die()
        return original(self, step, split, values)

    metrics.MetricsWriter.write = write


SITES = {"iterator-save": _kill_in_iterator_save, "metrics-write": _kill_in_metrics_write}


def main() -> None:
    site, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    SITES[site](n)
    from jaxorder.cli import main as cli_main
    sys.exit(cli_main(args))


if __name__ == "__main__":
    main()
