"""The train state (params, optimizer state, step) and where it lives on the mesh (Placement)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxorder import model, objectives
from jaxorder.config import Config
from jaxorder.platform import sharding


def init_boxed_state(cfg: Config, optimizer: optax.GradientTransformation) -> dict:
    """Train state whose parameter-shaped leaves carry logical axis names (nn.LogicallyPartitioned)."""
    objective = objectives.of(cfg)
    params = model.init_boxed_params(cfg.model, jax.random.key(cfg.train.seed), cfg.data.seq_len,
                                     objective.target_positions, objective.length_classes(cfg))
    if objective.own_params is not None:  # a separate key: the network's own initialization is unchanged
        own = objective.own_params(cfg, jax.random.fold_in(jax.random.key(cfg.train.seed), 1))
        params = {**params, objectives.OWN_PARAMS: own}
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def init_state(cfg: Config, optimizer: optax.GradientTransformation) -> dict:
    return nn.meta.unbox(init_boxed_state(cfg, optimizer))


@dataclass(frozen=True)
class Placement:
    """Where a run lives: its mesh, logical rules and the shardings of state and batches."""
    mesh: Any
    rules: tuple
    state: Any  # pytree of NamedShardings matching init_state
    batch: Any  # NamedSharding of [B, L] token batches
    replicated: Any

    @contextlib.contextmanager
    def active(self):
        """Mesh and logical-axis rules in force while tracing (activation sharding constraints)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(list(self.rules)):
            yield

    def abstract_state(self, cfg: Config, optimizer: optax.GradientTransformation) -> Any:
        shapes = jax.eval_shape(lambda: init_state(cfg, optimizer))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.state)

    def put_batch(self, local_BL) -> jax.Array:
        return sharding.global_batch(local_BL, self.batch)


def make_placement(cfg: Config, optimizer: optax.GradientTransformation,
                   devices: list | None = None) -> Placement:
    mesh = sharding.make_mesh(cfg.mesh, devices)
    sharding.check_divisible(cfg.data.batch_size, mesh)
    rules = cfg.mesh.rules
    state = sharding.state_shardings(lambda: init_boxed_state(cfg, optimizer), mesh, rules)
    return Placement(mesh, rules, state, sharding.batch_sharding(mesh), sharding.replicated(mesh))
