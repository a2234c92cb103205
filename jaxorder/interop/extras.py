"""Optional dependencies (install extras): import them with one line saying what to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from jaxorder.errors import ConfigError

# extra name -> the distributions it installs (pyproject.toml [project.optional-dependencies])
EXTRAS = {
    "hf": ("torch", "transformers", "safetensors"),
    "eval": ("lm_eval",),
    "wandb": ("wandb",),
}


class MissingExtra(ConfigError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """`importlib.import_module(module)`, or MissingExtra: "... needs the [extra] extra: pip install ..."."""
    try:
        return importlib.import_module(module)
    except ImportError:  # its traceback is the noise this one line replaces
        what = f"{purpose} needs" if purpose else f"'{module}' is part of"
        top = module.split(".")[0]
        raise MissingExtra(f"{what} the optional dependency '{top}', which is not installed; "
                           f"install the [{extra}] extra: pip install -e '.[{extra}]'") from None
