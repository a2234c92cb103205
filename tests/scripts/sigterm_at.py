"""Runs the `jaxorder` command line and sends SIGTERM to its own process after train step K, on one
process of a multi-process run only (a preemption notice that reaches one host first, or only one).

Usage: python sigterm_at.py PROCESS K ARGS...   (ARGS as for `jaxorder`)

The signal goes out when that process records step K's health flag (training/health.py), i.e.
right after dispatching step K, so delivery does not depend on timing. Used by tests/test_preemption.py."""
from __future__ import annotations

import os
import signal
import sys


def _sigterm_after_step(process: int, k: int) -> None:
    import jax

    from jaxorder.training import health

    original = health.BadSteps.observe

    def observe(self, step, finite):
        original(self, step, finite)
        if step == k and jax.process_index() == process:
            os.kill(os.getpid(), signal.SIGTERM)

    health.BadSteps.observe = observe


def main() -> None:
    process, k, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    _sigterm_after_step(process, k)
    from jaxorder.cli import main as cli_main
    sys.exit(cli_main(args))


if __name__ == "__main__":
    main()
