"""Cloud TPU slice names as compile-only TPU devices, for `jaxorder compile --topology v5e-256`.

A slice name is GENERATION-COUNT as in `--accelerator-type`: v5e (alias v5litepod) and v6e count
chips; v4 and v5p count TensorCores, two per chip, and JAX sees one (megacore) device per chip.
`devices()` asks JAX for the slice's compile-only devices
(`jax.experimental.topologies.get_topology_desc`), which needs libtpu; without it
`TopologyUnavailable` says why and the caller falls back to a CPU estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from jaxorder.config import ConfigError

# generation -> (cores per chip, mesh dimensions, largest count); 2-D tori for v5e/v6e, 3-D for v4/v5p
GENERATIONS = {"v4": (2, 3, 8192), "v5p": (2, 3, 8192), "v5e": (1, 2, 256), "v6e": (1, 2, 256)}
ALIASES = {"v5litepod": "v5e"}


class TopologyUnavailable(Exception):
    """This JAX cannot describe TPU topologies (no libtpu); the message says why, in one line."""


@dataclass(frozen=True)
class TpuSlice:
    name: str  # as given, e.g. 'v5e-256'
    generation: str  # v4 | v5p | v5e | v6e
    chips: int  # = JAX devices per slice
    shape: tuple[int, ...]  # chips along the torus axes

    @property
    def topology_name(self) -> str:
        """The name get_topology_desc takes, e.g. 'v5e:16x16', 'v5p:4x4x8'."""
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """Chips of one TPU VM: 4 (2x2) on every multi-host slice, 8 (2x4) on v5e-8/v6e-8."""
        if self.chips < 4:
            return (*self.shape, 1, 1)[:3]  # type: ignore[return-value]
        return (2, 4, 1) if self.chips == 8 and len(self.shape) == 2 else (2, 2, 1)


def chip_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The standard slice shape: start from 1x1 (2-D) or 2x2x1 (3-D) and double the smallest axis,
    the last of equals first: 256 chips 2-D -> 16x16, 64 chips 3-D -> 4x4x4, 128 -> 4x4x8."""
    shape = [1, 1] if dims == 2 else [2, 2, 1]
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = len(shape) - 1 - shape[::-1].index(smallest)
        shape[i] *= 2
    return tuple(shape)


def parse_slice(name: str) -> TpuSlice:
    """'v5e-256' -> TpuSlice; a ConfigError naming the valid forms otherwise."""
    generation, _, count = name.strip().lower().partition("-")
    generation = ALIASES.get(generation, generation)
    if generation not in GENERATIONS or not count.isdigit():
        raise ConfigError(f"--topology {name!r} is not a TPU slice name; use GENERATION-COUNT with "
                          f"GENERATION one of {', '.join(GENERATIONS)} (e.g. v5e-256, v5p-128, v4-32, v6e-8)")
    cores_per_chip, dims, largest = GENERATIONS[generation]
    n = int(count)
    smallest = 4 * cores_per_chip if dims == 3 else 1
    if n < smallest or n > largest or n & (n - 1):
        raise ConfigError(f"--topology {name}: the {generation} count must be a power of two from {smallest} "
                          f"to {largest} ({'TensorCores, 2 per chip' if cores_per_chip == 2 else 'chips'})")
    chips = n // cores_per_chip
    return TpuSlice(name, generation, chips, chip_shape(chips, dims))


def devices(tpu: TpuSlice, num_slices: int) -> list:
    """The compile-only devices of `num_slices` such slices (with slice_index when > 1)."""
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            topology_name=tpu.topology_name, platform="tpu",
            chip_config_name="megacore" if tpu.generation in ("v4", "v5p") else "default",
            chips_per_host_bounds=tpu.chips_per_host_bounds, num_slices=num_slices)
    except (ImportError, RuntimeError, NotImplementedError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TopologyUnavailable(first) from None
    return list(desc.devices)
