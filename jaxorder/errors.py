"""The one error type for bad input (configs, overrides, run directories, CLI options)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad config, override or run directory; the message names the problem and the fix."""
