"""Named registries of the things an experiment chooses by name: order families and samplers.

A family or sampler file declares one value at its end and registers it here; the package
`__init__` of `jaxorder.objectives` / `jaxorder.sampling` imports every such file, so importing
`jaxorder` fills both registries before any config is validated. The registries hold values of
higher layers (`objectives.base.Objective`, `sampling.base.Sampler`) without importing them:
config validation reaches an objective's own checks through its registered value.
"""
from __future__ import annotations

import contextlib
from typing import Any, Generic, Iterator, TypeVar

from jaxorder.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """key -> value (the key is the value's `key` attribute if it has one, else its `name`); keys are
    unique, lookups of unknown keys are one-line ConfigErrors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._values: dict[str, T] = {}

    def register(self, value: T) -> T:
        key = _key(value)
        if key in self._values:
            raise ValueError(f"{self.kind} '{key}' is already registered")
        self._values[key] = value
        return value

    def unregister(self, name: str) -> None:
        del self._values[name]

    @contextlib.contextmanager
    def registered(self, value: T) -> Iterator[T]:
        """Registers `value` for the duration of a with-block (tests, notebooks)."""
        self.register(value)
        try:
            yield value
        finally:
            self.unregister(_key(value))

    def get(self, name: str) -> T:
        if name not in self._values:
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(self._values)}")
        return self._values[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._values)

    def values(self) -> tuple[T, ...]:
        return tuple(self._values.values())

    def __contains__(self, name: Any) -> bool:
        return name in self._values


def _key(value: Any) -> str:
    return getattr(value, "key", None) or getattr(value, "name")


OBJECTIVES: Registry[Any] = Registry("objective")
SAMPLERS: Registry[Any] = Registry("sampler")
