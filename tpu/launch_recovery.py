"""Automatic recovery for `tpu/launch.py launch --retries N` (standard library only).

`step` is the whole policy: a pure function from (Recovery, event) to (Recovery, next action). An
event is either a poll (`Polled`: the TPU's state word and, when it is ready, every worker's job
status) or the outcome of an action it asked for (`Ran`). `drive` is the loop that turns actions
into gcloud commands, and `plan_lines` spells that loop out for --dry-run.

Policy, per poll while the job runs (phase `watch`):
- TPU READY/ACTIVE and every worker `exit 0`: done (exit 0).
- a worker `exit N` with N not 0 or 143, and none with `exit 143` or `none`: the job failed by itself
  (a bug, bad config): stop, exit 1, without spending retries on a crash loop.
- no worker running any more (exit 143 = SIGTERM after a checkpoint, or `none` = killed without an
  exit code): relaunch on the same TPU (one retry).
- some workers running, others ended without `exit 0`, for STRAY_POLLS polls in a row: halt all,
  relaunch (one retry). The ssh probe failing UNREACHABLE_POLLS polls in a row: recreate (one retry).
- TPU in a LOST state or NOT_FOUND: delete (unless already gone) and create it again (one retry),
  then wait (phase `provision`) until it is READY/ACTIVE, install, launch.
- describe failing MAX_BLIND_POLLS times in a row (network, credentials): stop, exit 1.
Every other state (CREATING, WAITING_FOR_RESOURCES, REPAIRING, ...) is waited out. A retry when
N retries are spent stops with exit 1 and says so.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from typing import Callable

from launch_gcloud import NOT_FOUND, UNKNOWN, capture, parse_state, run
from launch_remote import parse_probe

READY = frozenset({"READY", "ACTIVE"})  # TPU VM, queued resource
LOST = frozenset({"PREEMPTED", "TERMINATED", "FAILED", "SUSPENDED", "SUSPENDING", "STOPPED", "STOPPING",
                  "HIDING", "HIDDEN", "DELETING", NOT_FOUND})
UNREACHABLE_POLLS = 3
STRAY_POLLS = 3
MAX_BLIND_POLLS = 10

POLL, DELETE, CREATE, INSTALL, LAUNCH, HALT, DONE, GIVE_UP = (
    "poll", "delete", "create", "install", "launch", "halt", "done", "give_up")
ACTIONS = (DELETE, CREATE, INSTALL, LAUNCH, HALT)  # the ones that run gcloud commands


@dataclass(frozen=True)
class Recovery:
    max_retries: int
    phase: str = "watch"  # watch: the job should be running | provision: waiting for a new TPU
    retries: int = 0
    unreachable: int = 0  # consecutive polls: TPU ready but the worker probe failed
    stray: int = 0  # consecutive polls: some workers running, others ended unfinished
    blind: int = 0  # consecutive polls: describe failed
    message: str = ""  # why it is done / gave up


@dataclass(frozen=True)
class Polled:
    state: str  # describe's state word, NOT_FOUND or UNKNOWN
    workers: tuple[str, ...] | None = None  # 'running' | 'none' | 'exit N' per worker; None: no answer


@dataclass(frozen=True)
class Ran:
    action: str
    ok: bool


def wants_probe(rec: Recovery, state: str) -> bool:
    """The workers are asked only while the job should run on a ready TPU."""
    return rec.phase == "watch" and state in READY


def _retry(rec: Recovery, reason: str, action: str, phase: str) -> tuple[Recovery, str]:
    if rec.retries >= rec.max_retries:
        return replace(rec, message=f"gave up after {rec.retries} of {rec.max_retries} retries "
                                    f"(last: {reason})"), GIVE_UP
    n = rec.retries + 1
    fresh = Recovery(rec.max_retries, phase=phase, retries=n,
                     message=f"retry {n}/{rec.max_retries}: {reason}")
    return fresh, action


def _exit_code(worker: str) -> int | None:
    return int(worker.split()[1]) if worker.startswith("exit ") else None


def _watch_ready(rec: Recovery, workers: tuple[str, ...] | None) -> tuple[Recovery, str]:
    if not workers:
        rec = replace(rec, unreachable=rec.unreachable + 1, stray=0)
        if rec.unreachable >= UNREACHABLE_POLLS:
            reason = f"workers unreachable over ssh for {rec.unreachable} polls"
            return _retry(rec, reason, DELETE, "provision")
        return rec, POLL
    rec = replace(rec, unreachable=0)
    codes = [_exit_code(w) for w in workers]
    failed = sorted({c for c in codes if c not in (None, 0, 143)})
    # A worker that got SIGTERM (143) or vanished (none) means a preemption; the others' crashes then
    # come from losing their peers, so only crashes without one are the job failing by itself.
    preempted = any(w == "none" or c == 143 for w, c in zip(workers, codes))
    if failed and not preempted:
        return replace(rec, message=f"the job exited with code {failed[0]} on a worker (not a preemption; "
                                    f"see `tpu/launch.py logs --worker all`)"), GIVE_UP
    if all(c == 0 for c in codes):
        return replace(rec, message=f"the job finished (exit 0 on all {len(codes)} workers)"), DONE
    running = sum(w == "running" for w in workers)
    if running == 0:
        return _retry(rec, "the job ended on the workers without finishing ("
                      + ", ".join(sorted(set(workers))) + ")", LAUNCH, "watch")
    if all(w == "running" or c == 0 for w, c in zip(workers, codes)):
        return replace(rec, stray=0), POLL  # finishing: some done, the rest still writing
    rec = replace(rec, stray=rec.stray + 1)
    if rec.stray >= STRAY_POLLS:
        return _retry(rec, f"{len(workers) - running} of {len(workers)} workers stopped while the others "
                           f"ran, for {rec.stray} polls", HALT, "watch")
    return rec, POLL


def step(rec: Recovery, event: Polled | Ran) -> tuple[Recovery, str]:
    """The next (Recovery, action) after `event`; see the module docstring for the policy."""
    if isinstance(event, Ran):
        if event.action == LAUNCH or event.action == CREATE:
            return replace(rec, phase="watch" if event.action == LAUNCH else "provision"), POLL
        if event.action == DELETE:
            # A failed delete (already gone) is fine; a failed create shows up as NOT_FOUND.
            return rec, CREATE
        if event.action == HALT:
            return rec, LAUNCH
        if event.action == INSTALL:
            return (rec, LAUNCH) if event.ok else _retry(rec, "install failed", INSTALL, "provision")
        raise ValueError(f"unknown action {event.action!r}")
    if event.state == UNKNOWN:
        rec = replace(rec, blind=rec.blind + 1)
        if rec.blind >= MAX_BLIND_POLLS:
            return replace(rec, message=f"describe failed {rec.blind} times in a row (network or gcloud "
                                        f"credentials?)"), GIVE_UP
        return rec, POLL
    rec = replace(rec, blind=0)
    if event.state in LOST:
        first = CREATE if event.state == NOT_FOUND else DELETE
        return _retry(rec, f"TPU state {event.state}", first, "provision")
    if event.state not in READY:
        return rec, POLL  # CREATING, WAITING_FOR_RESOURCES, REPAIRING, ...: wait
    if rec.phase == "provision":
        return replace(rec, phase="watch"), INSTALL
    return _watch_ready(rec, event.workers)


# ----------------------------------------------------------------------------------------------
# the loop


Commands = dict  # action -> (list of argv, optional local preparation callback)


def drive(rec: Recovery, plan: Commands, describe_argv: list[str], probe_argv: list[str], *,
          poll_seconds: float, prog: str, log: Callable[[str], None],
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Launch, then follow `step` until DONE (0) or GIVE_UP (1), running `plan`'s commands."""
    action, last = LAUNCH, None
    while True:
        if action in (DONE, GIVE_UP):
            log(f"{prog}: {rec.message}")
            return 0 if action == DONE else 1
        if action == POLL:
            sleep(poll_seconds)
            state = parse_state(capture(describe_argv))
            workers = None
            if wants_probe(rec, state):
                probed = capture(probe_argv)
                workers = parse_probe(probed.stdout) if probed.returncode == 0 else None
            seen = (state, workers)
            if seen != last:
                answer = ", ".join(workers) if workers else "no answer"
                log(f"{prog}: {time.strftime('%H:%M:%S')} TPU {state}"
                    + (f", workers: {answer}" if wants_probe(rec, state) else ""))
                last = seen
            event = Polled(state, workers)
        else:
            argvs, prepare = plan[action]
            if prepare is not None:
                prepare()
            event = Ran(action, all(run(argv, prog) == 0 for argv in argvs))  # stops at the first failure
        retries = rec.retries
        rec, action = step(rec, event)
        if rec.retries != retries:
            log(f"{prog}: {rec.message}")


def plan_lines(plan: Commands, describe_argv: list[str], probe_argv: list[str], retries: int,
               poll_seconds: float) -> list[str]:
    """The --dry-run text of `launch --retries`: every command, in order, with the loop as # lines."""
    def cmds(action: str) -> list[str]:
        return [shlex.join(argv) for argv in plan[action][0]]

    return [
        *cmds(LAUNCH),
        f"# watch: every {poll_seconds:g} s, until the job ends or {retries} retries are spent:",
        shlex.join(describe_argv),
        f"#   state {'|'.join(sorted(READY))}: ask every worker for its job status",
        shlex.join(probe_argv),
        "#     every worker 'exit 0': done, exit 0",
        "#     a worker 'exit N' (N not 0 or 143) and none 'exit 143'/'none': the job failed: stop, exit 1",
        "#     no worker running, one 'exit 143' or 'none': retry: relaunch on the same TPU",
        *cmds(LAUNCH),
        f"#     some running, others stopped, {STRAY_POLLS} polls in a row: retry: halt all, relaunch",
        *cmds(HALT),
        *cmds(LAUNCH),
        f"#     workers unreachable {UNREACHABLE_POLLS} polls in a row: retry: recreate (as below)",
        f"#   state {'|'.join(sorted(LOST - {NOT_FOUND}))}: retry: delete, create",
        *cmds(DELETE),
        *cmds(CREATE),
        f"#   {NOT_FOUND} (deleted): retry: create",
        *cmds(CREATE),
        f"#   then every {poll_seconds:g} s until state {'|'.join(sorted(READY))}:",
        shlex.join(describe_argv),
        "#   then reinstall and relaunch the same command (training resumes from the newest checkpoint):",
        *cmds(INSTALL),
        *cmds(LAUNCH),
        "#   and watch again",
        "#   any other state (CREATING, WAITING_FOR_RESOURCES, ...): wait",
        f"# a retry after {retries} retries: stop, exit 1 ('gave up after {retries} of {retries} retries')",
        f"# describe failing {MAX_BLIND_POLLS} polls in a row: stop, exit 1",
    ]
