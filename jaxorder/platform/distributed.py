"""Multi-process start-up: `jax.distributed.initialize` from the config, before any JAX computation.

`distributed.mode=auto` lets JAX detect the cluster (Cloud TPU pods, SLURM); `explicit` names the
coordinator (host:port of process 0), the process count and this process's id (local tests use
127.0.0.1); `slurm` reads them from the variables `srun` sets (`slurm_arguments`). On CPU,
cross-process collectives use gloo.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Mapping

import jax
from jax.experimental import multihost_utils

from jaxorder.config import ConfigError, DistributedConfig
from jaxorder.platform import progress

SLURM_REQUIRED = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
SLURM_NODELISTS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")  # srun step, then sbatch
SLURM_NUM_NODES = ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list in compact form: 'node[01-04,07],gpu3' -> 'node01',
    'rack[1-2]-n[5-6]' -> 'rack1-n5' (what `scontrol show hostnames` prints first)."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first host expression
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    head = nodelist[:end].strip()
    if not head or depth < 0:
        raise ConfigError(f"cannot read a host from the SLURM node list {nodelist!r}; set "
                          f"distributed.coordinator=HOST:PORT")
    # Each bracket group contributes its first element: the start of its first range.
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], head)


def _local_device_ids(cfg: DistributedConfig, env: Mapping[str, str], tasks: int) -> list[int] | None:
    """The GPUs this process drives: None = every device it sees."""
    if cfg.local_devices == "all":
        return None
    if cfg.local_devices != "auto":
        return [int(i) for i in cfg.local_devices.split(",")]
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(visible) == 1:
        return None  # SLURM bound one GPU to this task (--gpus-per-task=1): it is device 0 here
    nodes = next((int(env[v]) for v in SLURM_NUM_NODES if env.get(v)), None)
    if nodes is not None and tasks > nodes:
        return [int(env["SLURM_LOCALID"])]  # several tasks per node sharing the node's GPUs: one each
    return None  # one task per node drives all of the node's GPUs


def slurm_arguments(cfg: DistributedConfig, env: Mapping[str, str]) -> dict:
    """Keyword arguments of `jax.distributed.initialize` for a process started by `srun`.

    Coordinator: the first node of the job on port 61440 + SLURM_JOB_ID mod 4096 (as JAX's own SLURM
    detection picks it), unless `distributed.coordinator` is set. JAX's detection is not used because
    it always pins one GPU per process by SLURM_LOCALID, which is wrong for one task per node."""
    missing = [v for v in SLURM_REQUIRED if not env.get(v)]
    nodelist = next((env[v] for v in SLURM_NODELISTS if env.get(v)), None)
    if nodelist is None and not cfg.coordinator:
        missing.append("SLURM_JOB_NODELIST")
    if missing:
        raise ConfigError(f"distributed.mode=slurm needs the SLURM variables {', '.join(missing)} (unset): "
                          f"start every process with srun inside an allocation, or use distributed.mode="
                          f"explicit")
    try:
        process_id, tasks = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        port = 65535 - 2**12 + 1 + int(env["SLURM_JOB_ID"]) % 2**12
        int(env["SLURM_LOCALID"])
    except ValueError:
        raise ConfigError("distributed.mode=slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and "
                          "SLURM_JOB_ID must be integers") from None
    coordinator = cfg.coordinator or f"{first_host(nodelist)}:{port}"
    return dict(coordinator_address=coordinator, num_processes=tasks, process_id=process_id,
                local_device_ids=_local_device_ids(cfg, env, tasks))


def initialize(cfg: DistributedConfig) -> None:
    if cfg.mode == "none" or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # affects only the CPU backend
    if cfg.mode == "auto":
        kwargs = {}
    elif cfg.mode == "slurm":
        # Everything is given, so JAX's cluster detection must not replace the local devices.
        kwargs = dict(slurm_arguments(cfg, os.environ), cluster_detection_method="deactivate",
                      initialization_timeout=300)
    else:
        kwargs = dict(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
                      process_id=cfg.process_id, initialization_timeout=120,
                      local_device_ids=_local_device_ids(cfg, {}, cfg.num_processes))  # auto: all
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"jax.distributed.initialize failed ({first}); check distributed.mode/coordinator "
                          f"and that every process was started") from None


def is_main_process() -> bool:
    """Process 0 writes logs, metrics and reports; every process writes its checkpoint shards."""
    return jax.process_index() == 0


LOG_MIRROR = "jaxorder.log"  # logger that gets each log() line when a run attaches its log file to it


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op for one process). Process 0 does a
    run's shared file operations (renames, repairs, rewrites) on one side of a barrier, so that no
    other process reads a file half rewritten or renames the same directory again."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def log(message: str) -> None:
    """Progress on stderr, from process 0 only (above an open progress bar, if any); also to the
    handlers on the LOG_MIRROR logger (training's RUN_DIR/logs/train.log)."""
    if is_main_process():
        progress.write(message)
        mirror = logging.getLogger(LOG_MIRROR)
        if mirror.handlers:
            mirror.info(message)
