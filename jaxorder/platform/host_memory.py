"""Host malloc settings that keep XLA:CPU from page-faulting its temporaries in on every step.

XLA:CPU allocates an executable's temporaries (one buffer per call, tens of MB for a small train
step) with posix_memalign on one of its worker threads. glibc serves such a request from that
thread's arena, whose heaps hold at most 64 MB, or, above its mmap threshold, with a fresh mmap;
either way the buffer is unmapped when freed, so the next call faults every page in again (the
kernel zeroes each 4 KiB page). What that cost and what tuning gained: docs/performance.md,
'Host malloc'.

`configure_host_malloc()` makes glibc keep that memory: one arena (all threads allocate from
the main heap, which grows without the 64 MB limit), no mmap-served chunks, and no trimming of
the heap top. Freed temporaries are then reused by the next step, with zero page faults in the
steady state. The cost: the process keeps its peak heap (RSS does not shrink after a large step)
and threads share one malloc lock (XLA:CPU mallocs a few buffers per step, not per op).

It must run before JAX creates its CPU client (its worker threads bind to arenas on their first
malloc), so `jaxorder`'s command line, benchmarks and test configuration call it first thing.
Set JAXORDER_HOST_MALLOC to choose:
  auto    (default) tune when the process can only run JAX on the CPU: glibc, and neither
          JAX_PLATFORMS nor an installed accelerator plugin (libtpu, jax_plugins) points
          elsewhere; accelerator hosts keep glibc's defaults;
  tuned   tune whatever the platform;
  system  leave glibc's defaults.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

ENV = "JAXORDER_HOST_MALLOC"
MODES = ("auto", "tuned", "system")
# mallopt(3) parameters (glibc malloc.h). A trim threshold of -1 disables trimming completely
# (mallopt(3)); the largest positive int would still trim a free heap top above 2 GiB.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc (the symbols already loaded: no library search)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def _jax_backends_initialized() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # private: if it moves, assume not yet (tuning late only has no effect)

    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def _accelerator_possible() -> str | None:
    """Why JAX might run on something other than the CPU in this process, or None."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        first = platforms.split(",")[0].strip()
        return None if first == "cpu" else f"JAX_PLATFORMS={platforms}"
    for module in ("libtpu", "jax_plugins"):
        if importlib.util.find_spec(module) is not None:
            return f"the {module} package is installed"
    plugins = [e.name for e in importlib.metadata.entry_points(group="jax_plugins")]
    return f"JAX plugins {', '.join(plugins)} are installed" if plugins else None


def configure_host_malloc(mode: str | None = None) -> str:
    """Applies the settings above per `mode` (default: $JAXORDER_HOST_MALLOC, else 'auto').

    Returns one line saying what was done ("tuned: ..." or "system: <why not>")."""
    mode = (mode or os.environ.get(ENV) or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r} is not a mode; use one of {', '.join(MODES)}")
    if mode == "system":
        return f"system: {ENV}=system"
    libc = _glibc()
    if libc is None:
        return "system: not glibc"
    if mode == "auto":
        reason = _accelerator_possible()
        if reason:
            return f"system: {reason} (set {ENV}=tuned to tune anyway)"
    if _jax_backends_initialized():
        return "system: JAX's backends already exist (call configure_host_malloc before any JAX computation)"
    for param, value in _SETTINGS:
        if libc.mallopt(param, value) != 1:
            return (f"system: mallopt({param}, {value}) failed (the settings before it in _SETTINGS are "
                    f"applied)")
    return "tuned: glibc malloc with one arena, no mmap chunks, no trimming"
