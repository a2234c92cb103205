"""Host-side bookkeeping of skipped (non-finite) train steps and the stop after too many in a row.

The compiled step (training/step.py) already leaves the parameters and optimizer state unchanged
when its loss or gradient norm is not finite and reports that as the `finite` metric. Reading the
flag after every step would make the host wait for the device each step, so the flags are kept as
device scalars and read in batches: at most `max_bad` steps late, and always before a checkpoint,
an evaluation or a log line.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


class TooManyBadSteps(FloatingPointError):
    """`train.max_bad_steps` consecutive steps had a non-finite loss or gradient norm."""


class BadSteps:
    """Counts skipped steps; `flush` raises TooManyBadSteps once `max_bad` consecutive ones are seen."""

    def __init__(self, max_bad: int, total_before: int = 0,
                 last_checkpoint: Callable[[], int | None] = lambda: None):
        self.max_bad = max_bad
        self.total = total_before  # over the whole run, resumed segments included
        self.consecutive = 0
        self._pending: list[tuple[int, Any]] = []
        self._last_checkpoint = last_checkpoint

    def observe(self, step: int, finite: Any) -> None:
        """Records step `step`'s device flag; reads the flags once `max_bad` are pending."""
        self._pending.append((step, finite))
        if len(self._pending) >= self.max_bad:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        flags = jax.device_get([f for _, f in self._pending])
        steps = [s for s, _ in self._pending]
        self._pending = []
        for step, ok in zip(steps, flags):
            if bool(ok):
                self.consecutive = 0
                continue
            self.total += 1
            self.consecutive += 1
            if self.consecutive >= self.max_bad:
                last = self._last_checkpoint()
                kept = f"the newest checkpoint (step {last}) is intact" if last is not None else \
                    "no checkpoint was written"
                raise TooManyBadSteps(
                    f"{self.consecutive} consecutive train steps (up to step {step}) had a non-finite "
                    f"loss or gradient norm and were skipped (train.max_bad_steps={self.max_bad}); "
                    f"{kept}; lower optimizer.lr, raise optimizer.warmup_steps or check the data")


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True iff every floating leaf of `tree` is finite (one fused reduction per leaf)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
