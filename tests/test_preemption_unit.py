"""The stop/checkpoint decision every process agrees on (training/preemption.py), in one process:
the reduction of the processes' flags, the checkpoint clock with a fake clock, the one-step-late
exchange of several processes (a fake exchange), the real collective over one process, and the
time-based checkpoints of a real training run."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.training import preemption
from jaxorder.training.loop import train
from jaxorder.training.preemption import AgreedStops, CheckpointClock, Decision, ProcessExchange, reduce_flags

from conftest import TINY, step_dirs


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decide(flags_PF) -> Decision:
    return preemption.as_decision(reduce_flags(np.asarray(flags_PF, dtype=np.int32), np))


@pytest.mark.parametrize("xp", [np, None], ids=["numpy", "jax"])
def test_any_process_sigterm_stops_and_only_process_zero_clock_checkpoints(xp):
    reduce = (lambda f: reduce_flags(f, np)) if xp is np else reduce_flags
    cases = {  # rows: processes 0..2; columns: [SIGTERM seen, checkpoint due]
        ((0, 0), (0, 0), (0, 0)): Decision(False, False),
        ((0, 0), (0, 0), (1, 0)): Decision(True, False),  # only the last process was signalled
        ((1, 0), (0, 0), (0, 0)): Decision(True, False),
        ((0, 0), (0, 1), (0, 1)): Decision(False, False),  # other clocks do not count
        ((0, 1), (0, 0), (0, 0)): Decision(False, True),  # process 0's clock decides alone
        ((1, 1), (1, 0), (1, 1)): Decision(True, True),
    }
    for flags, expected in cases.items():
        assert preemption.as_decision(reduce(np.asarray(flags, dtype=np.int32))) == expected, flags


def test_checkpoint_clock_is_due_after_the_interval_since_the_last_reset():
    clock = FakeClock()
    every = CheckpointClock(2.0, clock)
    clock.now += 119.9
    assert not every.due()
    clock.now += 0.1
    assert every.due()
    every.reset()
    assert not every.due()
    clock.now += 120
    assert every.due()
    off = CheckpointClock(0.0, clock)
    clock.now += 1e9
    assert not off.due()


def test_one_process_decides_at_once_and_a_checkpoint_restarts_the_clock():
    clock = FakeClock()
    stops = AgreedStops(1.0, None, clock)
    with stops:
        assert stops.at_boundary() == Decision()
        clock.now += 60
        assert stops.at_boundary() == Decision(checkpoint=True)
        assert stops.at_boundary() == Decision(), "the clock was not restarted by its own checkpoint"
        clock.now += 59
        stops.saved()  # a step-based save also restarts it
        clock.now += 59
        assert stops.at_boundary() == Decision()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.at_boundary() == Decision(stop=True)
    assert signal.getsignal(signal.SIGTERM) is not stops.sigterm._handle  # the handler is restored


class FakeExchange:
    """Two processes, the other one's flags scripted; records what this process sent."""

    def __init__(self, other_flags: list[tuple[int, int]]):
        self.other = list(other_flags)
        self.sent: list[list[int]] = []

    def send(self, local_F):
        self.sent.append(local_F.tolist())
        return np.stack([local_F, np.asarray(self.other.pop(0), dtype=np.int32)])

    @staticmethod
    def receive(sent) -> Decision:
        return decide(sent)


def test_several_processes_act_one_step_late_on_the_exchanged_flags():
    clock = FakeClock()
    # The other process is SIGTERMed before boundary 3; this process's clock runs out before boundary 2.
    exchange = FakeExchange([(0, 0), (0, 0), (1, 0), (1, 0)])
    stops = AgreedStops(1.0, exchange, clock)
    with stops:
        assert stops.at_boundary() == Decision()  # nothing exchanged yet
        clock.now += 60
        assert stops.at_boundary() == Decision()  # the due flag goes out now...
        assert stops.at_boundary() == Decision(checkpoint=True)  # ...and is acted on here
        assert stops.at_boundary() == Decision(stop=True)  # the other process's SIGTERM of boundary 3
    # The checkpoint restarted the clock before this boundary's flags went out: one checkpoint, not two.
    assert exchange.sent == [[0, 0], [0, 1], [0, 0], [0, 0]]


def test_the_collective_exchange_over_one_process():
    exchange = ProcessExchange()
    assert exchange.receive(exchange.send(np.asarray([1, 0], dtype=np.int32))) == Decision(stop=True)
    assert exchange.receive(exchange.send(np.asarray([0, 1], dtype=np.int32))) == Decision(checkpoint=True)


def test_time_based_checkpoints_in_a_training_run(tmp_path, repeated_corpus):
    overrides = [*TINY, "data.source=text", f"data.path={repeated_corpus}", "train.steps=5",
                 "train.eval_every=100", "train.checkpoint_every=100", "train.max_to_keep=10"]
    train(config_lib.load(None, [*overrides, "train.checkpoint_every_minutes=1e-9"]), tmp_path / "timed")
    # Due after every step (without it: only the final step 5; checkpoint_every=100 saves nothing).
    assert step_dirs(tmp_path / "timed") == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_checkpoint_every_minutes_must_be_non_negative(value):
    with pytest.raises(ConfigError, match="train.checkpoint_every_minutes must be"):
        config_lib.load(None, [f"train.checkpoint_every_minutes={value}"])
