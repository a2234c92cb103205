"""The one error type for bad input (configs, overrides, run directories, CLI options)."""
from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A bad config, override or run directory; the message names the problem and the fix.

    Always one line: line breaks in quoted input (a YAML key, an override) are escaped."""

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


# errno -> (what to do, exit status): 2 when the fix is a different input (path, permissions),
# 1 when the environment failed (disk full, I/O error) and the same command may work later.
_OS_FIXES = {
    errno.ENOSPC: ("free disk space (or use a --run-dir on a larger disk) and re-run the same command "
                   "to resume from the newest complete checkpoint", 1),
    errno.EDQUOT: ("free space under the disk quota and re-run the same command to resume", 1),
    errno.EIO: ("the storage failed; re-run the same command to resume", 1),
    errno.EACCES: ("choose a writable --run-dir or fix its permissions", 2),
    errno.EPERM: ("choose a writable --run-dir or fix its permissions", 2),
    errno.EROFS: ("the file system is read-only; choose another --run-dir", 2),
    errno.ENOTDIR: ("a parent of the path is a file; choose another path", 2),
    errno.EEXIST: ("a file is in the way; choose another path", 2),
}


def describe_os_error(error: OSError) -> tuple[str, int]:
    """(one-line message, exit status) for an OSError that reached the command line."""
    where = f" ({error.filename})" if error.filename else ""
    what = error.strerror or (str(error).splitlines()[0] if str(error) else type(error).__name__)
    fix, status = _OS_FIXES.get(error.errno, ("check the path and the disk", 1))
    return f"{what}{where}; {fix}", status


def out_of_memory_line(error: Exception) -> str:
    """XLA's out-of-memory report (a hundred lines of buffer listings) as one line with the knobs."""
    first = str(error).strip().splitlines()[0][:200]
    return (f"out of device memory ({first}); lower data.batch_size (or raise train.grad_accum_steps), "
            f"data.seq_len or the model size, or set model.remat=full; `jaxorder compile CONFIG` shows the "
            f"memory a config needs")
