"""The data side's error type, in a module of its own so that every data module can import it."""
from __future__ import annotations

from jaxorder.config import ConfigError


class DataError(ConfigError):
    """Bad or missing data (path, corpus package, too little text); the message names the fix."""
