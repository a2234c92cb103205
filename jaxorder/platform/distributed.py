"""Multi-process start-up: `jax.distributed.initialize` from the config, before any JAX computation.

`distributed.mode=auto` lets JAX detect the cluster (Cloud TPU pods, SLURM); `explicit` names the
coordinator (host:port of process 0), the process count and this process's id (local tests use
127.0.0.1). On CPU, cross-process collectives use gloo.
"""
from __future__ import annotations

import logging

import jax

from jaxorder.config import ConfigError, DistributedConfig
from jaxorder.platform import progress


def initialize(cfg: DistributedConfig) -> None:
    if cfg.mode == "none" or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # affects only the CPU backend
    try:
        if cfg.mode == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
                                       process_id=cfg.process_id, initialization_timeout=120)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"jax.distributed.initialize failed ({first}); check distributed.mode/coordinator "
                          f"and that every process was started") from None


def is_main_process() -> bool:
    """Process 0 writes logs, metrics and reports; every process writes its checkpoint shards."""
    return jax.process_index() == 0


LOG_MIRROR = "jaxorder.log"  # logger that gets each log() line when a run attaches its log file to it


def log(message: str) -> None:
    """Progress on stderr, from process 0 only (above an open progress bar, if any); also to the
    handlers on the LOG_MIRROR logger (training's RUN_DIR/logs/train.log)."""
    if is_main_process():
        progress.write(message)
        mirror = logging.getLogger(LOG_MIRROR)
        if mirror.handlers:
            mirror.info(message)
