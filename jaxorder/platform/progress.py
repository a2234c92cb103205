"""Progress bars for long work (training steps, evaluation batches, sweeps, sampler grids, data
preparation): a tqdm bar with rate and ETA when stderr (where jaxorder reports progress) is a
terminal, nothing otherwise, so logs and CI keep their plain lines. JAXORDER_PROGRESS=1 / 0
forces bars on / off. Only process 0 draws. Log lines printed while a bar is open go through
`write`, so the bar redraws below them instead of being torn.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Iterator, TypeVar

import jax

T = TypeVar("T")
_open_bars: list[Any] = []


def enabled() -> bool:
    forced = os.environ.get("JAXORDER_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    return jax.process_index() == 0 and sys.stderr.isatty()


class Bar:
    """A tqdm bar, or a no-op when bars are off (same calls either way)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0, leave: bool = True):
        self._bar = None
        if enabled():
            from tqdm.auto import tqdm  # a dependency of tensorflow-datasets; lazy: only for terminals

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
                             dynamic_ncols=True)
            _open_bars.append(self._bar)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            _open_bars.remove(self._bar)
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
          leave: bool = True) -> Iterator[T]:
    """`items`, advancing a bar per item."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with Bar(total if total is not None else len(items), desc, unit, leave=leave) as bar:  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.update()


def write(message: str) -> None:
    """A log line on stderr that keeps an open bar intact."""
    if _open_bars:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
