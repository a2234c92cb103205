"""Strict JSON for the command line: what `--json` and JSON-lines outputs print."""
from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """NaN/inf (e.g. the standard error of a single window) become null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """One strict JSON text of `value` (non-finite floats as null)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
