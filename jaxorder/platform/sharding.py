"""Device meshes and the one place where logical axis names meet mesh axes.

The model annotates parameters and activations with logical names (`batch`, `length`, `embed`,
`heads`, `kv`, `mlp`, `vocab`); `cfg.mesh.rules` maps them, by priority, to the mesh axes
`data`, `fsdp`, `tensor`. Parameter and optimizer-state shardings are derived from the
annotations with `jax.eval_shape`, so nothing is materialized to find them.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxorder.config import MESH_AXES, ConfigError, MeshConfig
from jaxorder.platform.distributed import log

BATCH_AXES = ("data", "fsdp")  # mesh axes a global batch is split over


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes per slice with -1 filled in; checks they use every device."""
    per_slice, rem = divmod(num_devices, mesh_cfg.dcn_data)
    if rem:
        raise ConfigError(f"{num_devices} devices do not split into mesh.dcn_data={mesh_cfg.dcn_data} slices")
    sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if per_slice % known:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {per_slice} devices per "
                              f"slice: {per_slice} is not divisible by {known}")
        sizes[sizes.index(-1)] = per_slice // known
    if math.prod(sizes) != per_slice:
        raise ConfigError(f"mesh data*fsdp*tensor = {math.prod(sizes)} but there are {per_slice} devices per "
                          f"slice; set one mesh size to -1 or make the product {per_slice}")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types; multi-slice puts slices on `data`."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(mesh_cfg, len(devices))
    names = MESH_AXES
    axis_types = (AxisType.Auto,) * len(names)
    if mesh_cfg.dcn_data > 1:
        if all(hasattr(d, "slice_index") for d in devices):
            from jax.experimental import mesh_utils

            grid = mesh_utils.create_hybrid_device_mesh(shape, (mesh_cfg.dcn_data, 1, 1), devices)
        else:
            log(f"mesh.dcn_data={mesh_cfg.dcn_data}: the {devices[0].platform} devices have no slice index; "
                f"simulating {mesh_cfg.dcn_data} slices of {len(devices) // mesh_cfg.dcn_data} consecutive "
                f"devices")
            grid = simulated_slices_grid(devices, mesh_cfg.dcn_data, shape)
        return Mesh(grid, names, axis_types=axis_types)
    if devices == jax.devices():
        return jax.make_mesh(shape, names, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), names, axis_types=axis_types)


def simulated_slices_grid(devices: list, dcn_data: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The hybrid mesh layout for devices without a slice index: slice s is devices
    [s * n, (s + 1) * n) (n per slice) and takes rows [s * data, (s + 1) * data) of the data axis,
    as create_hybrid_device_mesh places real slices (the slice is the outer part of `data`)."""
    data, fsdp, tensor = shape
    return np.asarray(devices, dtype=object).reshape(dcn_data * data, fsdp, tensor)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: tuple) -> Any:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def state_shardings(init_fn: Callable[[], Any], mesh: Mesh, rules: tuple) -> Any:
    """Shardings for the pytree `init_fn()` returns, from its logical annotations.

    `init_fn` must return a tree whose parameter-shaped leaves are still boxed
    (`nn.LogicallyPartitioned`), e.g. optimizer state built from boxed params; unboxed leaves
    (the step, optax's `count`) are replicated explicitly with `P()`.
    """
    abstract = jax.eval_shape(init_fn)
    specs = nn.get_partition_spec(abstract)
    shardings = logical_to_sharding(specs, mesh, rules)
    return nn.meta.unbox(shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, L] batches: B split over data x fsdp (which includes the slices), L unsplit."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def check_divisible(global_batch: int, mesh: Mesh) -> None:
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch % ways:
        raise ConfigError(f"data.batch_size={global_batch} is not divisible by the {ways} batch shards "
                          f"(mesh data x fsdp); change data.batch_size or the mesh")


def global_batch(local_BL: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Assembles each process's rows into one global array (rows of process 0 first)."""
    if jax.process_count() == 1:
        return jax.device_put(local_BL, sharding)
    return jax.make_array_from_process_local_data(sharding, local_BL)
