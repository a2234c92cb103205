"""Stop and checkpoint decisions that every process of a run agrees on (SIGTERM, a checkpoint clock).

A preemption's SIGTERM reaches the processes of a pod at different moments, sometimes only some
of them, and each process's clock reads differently. A checkpoint save is a collective, so a
process that decides on its own to save (or to stop) while another runs the next step hangs the
job. So at every step boundary each process contributes its local flags, [SIGTERM seen, time-based
checkpoint due], to one tiny collective, and all act on the same reduction of them:

- stop: *any* process saw SIGTERM (a max over the processes);
- checkpoint: process 0's clock says `train.checkpoint_every_minutes` have passed since the last
  save (process 0's flag alone: one clock decides).

Waiting for the collective's result right after dispatching it would make the host wait for the
device every step (the same reason health.py reads its flags in batches), so with several
processes the exchange dispatched at one boundary is read at the next: the decision comes one
step late, on every process alike. One process has nothing to agree with and decides at once.

Orbax's `CheckpointManager.reached_preemption` (JAX's preemption sync point) covers SIGTERM only and
only when `jax.distributed` runs; the checkpoint clock needs a collective anyway, so both flags
travel in this one.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SIGTERM, DUE = 0, 1  # columns of a process's flags


@dataclass(frozen=True)
class Decision:
    stop: bool = False  # some process saw SIGTERM: save this step and stop (Preempted)
    checkpoint: bool = False  # process 0's checkpoint clock ran out: save this step


def reduce_flags(flags_PF: Any, xp: Any = jnp) -> Any:
    """[processes, 2] flags -> [stop, checkpoint]: any process's SIGTERM, process 0's clock.

    `xp` is numpy for one process, so that deciding never waits for the device."""
    return xp.stack([flags_PF[:, SIGTERM].max(), flags_PF[0, DUE]])


def as_decision(reduced_2: Any) -> Decision:
    stop, due = np.asarray(reduced_2).tolist()
    return Decision(stop=bool(stop), checkpoint=bool(due))


class SigtermFlag:
    """Turns SIGTERM into a flag read between steps (handler installed from the main thread only)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> "SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class CheckpointClock:
    """Whether `minutes` have passed since the last save (never, when minutes is 0)."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = minutes * 60.0
        self._clock = clock
        self._last = clock()

    def due(self) -> bool:
        return self.seconds > 0 and self._clock() - self._last >= self.seconds

    def reset(self) -> None:
        self._last = self._clock()


class ProcessExchange:
    """The collective: each process's [2] flags in, the reduced [2] out, replicated on every device."""

    def __init__(self) -> None:
        self.processes = jax.process_count()
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        mesh = Mesh(np.array(devices).reshape(self.processes, -1), ("process", "local"))
        self._rows = NamedSharding(mesh, PartitionSpec("process"))  # row p lives on process p
        self._reduce = jax.jit(reduce_flags, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def send(self, local_F: np.ndarray) -> jax.Array:
        """Dispatches the exchange (does not wait for it)."""
        flags_PF = jax.make_array_from_process_local_data(self._rows, local_F[None],
                                                          (self.processes, local_F.shape[0]))
        return self._reduce(flags_PF)

    @staticmethod
    def receive(sent: jax.Array) -> Decision:
        return as_decision(sent.addressable_data(0))


class AgreedStops:
    """`with AgreedStops(minutes) as stops:` then `stops.at_boundary()` after every step, on every process.

    `exchange` is None for one process (decided at once), else a ProcessExchange (one step late).
    """

    def __init__(self, checkpoint_every_minutes: float, exchange: ProcessExchange | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.sigterm = SigtermFlag()
        self.clock = CheckpointClock(checkpoint_every_minutes, clock)
        self.exchange = exchange
        self._pending: jax.Array | None = None

    @classmethod
    def for_processes(cls, checkpoint_every_minutes: float) -> "AgreedStops":
        return cls(checkpoint_every_minutes, ProcessExchange() if jax.process_count() > 1 else None)

    def __enter__(self) -> "AgreedStops":
        self.sigterm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sigterm.__exit__(*exc)

    def _local_flags(self) -> np.ndarray:
        return np.asarray([self.sigterm.raised, self.clock.due()], dtype=np.int32)

    def at_boundary(self) -> Decision:
        """The decision every process takes at this step boundary (a collective with several processes)."""
        if self.exchange is None:
            decision = as_decision(reduce_flags(self._local_flags()[None], np))
        else:
            # Read first, so a checkpoint decided now resets the clock before the next flags go out.
            decision = Decision() if self._pending is None else self.exchange.receive(self._pending)
        if decision.checkpoint:
            self.clock.reset()
        if self.exchange is not None:
            self._pending = self.exchange.send(self._local_flags())
        return decision

    def saved(self) -> None:
        """A checkpoint was written (whatever decided it): the clock starts again."""
        self.clock.reset()
