"""Which restore failures mean "this checkpoint's bytes are damaged" and which mean anything else.

Only damage justifies moving a checkpoint aside and falling back to an older one. A permission
problem, an unreachable bucket, a full memory or a model that does not fit the stored arrays says
nothing about the checkpoint: falling back would silently train or evaluate an older step, and
moving the newest aside would lose a good checkpoint. Those stop with one line instead.
"""
from __future__ import annotations

import errno
import inspect
import sys
from typing import Any

# Status codes (tensorstore / gRPC style, they start the message) and phrases that mean the
# checkpoint could not be *reached* or does not *fit*, not that it is damaged.
NOT_DAMAGE = {
    "PERMISSION_DENIED": "check the permissions of the run directory",
    "UNAUTHENTICATED": "check the credentials of the storage",
    "UNAVAILABLE": "the storage did not answer; retry",
    "DEADLINE_EXCEEDED": "the storage did not answer in time; retry",
    "RESOURCE_EXHAUSTED": "out of memory while restoring; free memory or use more devices",
    "CANCELLED": "the read was cancelled; retry",
    "not compatible with the stored shape": "the checkpoint was written for another model config; "
                                            "use the run's own config or a new --run-dir",
}
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


def not_damage_hint(error: BaseException) -> str | None:
    """The fix for a failure that is *not* damage to the checkpoint; None if it is damage."""
    if isinstance(error, MemoryError):
        return NOT_DAMAGE["RESOURCE_EXHAUSTED"]
    if isinstance(error, PermissionError):
        return NOT_DAMAGE["PERMISSION_DENIED"]
    if isinstance(error, OSError) and error.errno is not None and error.errno not in _MISSING:
        return f"the storage failed ({errno.errorcode.get(error.errno, error.errno)}); fix it and retry"
    text = str(error)
    for marker, hint in NOT_DAMAGE.items():
        if marker in text:
            return hint
    return None


def first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error)
    return text.splitlines()[0][:limit] if text.strip() else type(error).__name__


def _abandoned_read(unraisable: Any) -> bool:
    """A report of an Orbax read abandoned after a failed restore (which was reported already)."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True  # a tensorstore read finishing after the restore closed Orbax's event loop
    code = getattr(obj, "cr_code", None)  # an Orbax read coroutine finalized with its error
    return inspect.iscoroutine(obj) and code is not None and "orbax" in code.co_filename


def silence_closed_loop_noise() -> None:
    """Drops the reports of Orbax reads abandoned after a failed restore: 'Event loop is closed'
    from tensorstore reads still in flight and the read coroutines' errors when they are finalized
    (dozens of tracebacks on stderr for one damaged file or one shape mismatch).

    They arrive on other threads and at garbage collection, during and long after the failing
    restore (up to the interpreter's exit), so the filter cannot be scoped to it; it is installed
    once, chains to the previous hook and passes every other report through."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxorder_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if not _abandoned_read(unraisable):
            previous(unraisable)

    hook._jaxorder_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
