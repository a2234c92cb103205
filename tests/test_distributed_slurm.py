"""distributed.mode=slurm: the arguments of jax.distributed.initialize from a faked SLURM environment,
the compact node-list parser against JAX's own SLURM detection, the one-line errors, and the GPU
configs (configs/gpu/*.yaml)."""
from __future__ import annotations

from pathlib import Path

import jax
import pytest
from jax._src.clusters.slurm_cluster import SlurmCluster

from jaxorder import config
from jaxorder.config import ConfigError, DistributedConfig
from jaxorder.platform import distributed
from jaxorder.platform.sharding import mesh_shape

REPO = Path(__file__).resolve().parents[1]
SLURM = "slurm"
# 2 nodes x 8 GPUs, one task per GPU, this is task 9 (node 2, local task 1)
PER_GPU = {"SLURM_JOB_ID": "12345", "SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2",
           "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
PORT = 65535 - 4096 + 1 + 12345 % 4096


@pytest.mark.parametrize("nodelist,host", [
    ("node01", "node01"),
    ("node01,node02", "node01"),
    ("node[01-04]", "node01"),
    ("node[07,01-04],gpu3", "node07"),
    ("gpu-a[003-004,010]", "gpu-a003"),
    ("rack[1-2]-n[5-6],x1", "rack1-n5"),
])
def test_first_host_of_a_compact_node_list(nodelist, host):
    assert distributed.first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["node01", "node[01-04]", "node[007,009-012],host2", "gpu-a[003-004]"])
def test_coordinator_equals_jax_slurm_detection(monkeypatch, nodelist):
    """The reference: JAX's own SLURM cluster detection picks the same host and port."""
    env = {**PER_GPU, "SLURM_STEP_NODELIST": nodelist}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ours = distributed.slurm_arguments(DistributedConfig(mode=SLURM), env)["coordinator_address"]
    assert ours == SlurmCluster.get_coordinator_address(None, None)


def test_bad_node_list_is_a_config_error():
    with pytest.raises(ConfigError, match="distributed.coordinator"):
        distributed.first_host("")


@pytest.mark.parametrize("env,local", [
    (PER_GPU, [1]),  # 16 tasks on 2 nodes, each sees all 8 GPUs: task 1 of its node takes GPU 1
    ({**PER_GPU, "CUDA_VISIBLE_DEVICES": "5"}, None),  # --gpus-per-task=1: its one GPU is device 0
    ({**PER_GPU, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, None),  # one task per node
])
def test_slurm_arguments(env, local):
    got = distributed.slurm_arguments(DistributedConfig(mode=SLURM), env)
    assert got == {"coordinator_address": f"gpu07:{PORT}", "num_processes": int(env["SLURM_NTASKS"]),
                   "process_id": int(env["SLURM_PROCID"]), "local_device_ids": local}


def test_explicit_overrides_and_step_node_list_first():
    cfg = DistributedConfig(mode=SLURM, coordinator="head:1234", local_devices="0,1")
    got = distributed.slurm_arguments(cfg, {**PER_GPU, "SLURM_JOB_NODELIST": ""})
    assert got["coordinator_address"] == "head:1234" and got["local_device_ids"] == [0, 1]
    assert distributed.slurm_arguments(DistributedConfig(mode=SLURM, local_devices="all"),
                                       PER_GPU)["local_device_ids"] is None
    step = distributed.slurm_arguments(DistributedConfig(mode=SLURM),
                                       {**PER_GPU, "SLURM_STEP_NODELIST": "n[3-4]"})
    assert step["coordinator_address"] == f"n3:{PORT}"  # an srun step's own nodes come first


def test_initialize_passes_them_to_jax_without_auto_detection(monkeypatch):
    for key, value in PER_GPU.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # keep this process's collectives setting
    distributed.initialize(DistributedConfig(mode=SLURM))
    assert calls == [{"coordinator_address": f"gpu07:{PORT}", "num_processes": 16, "process_id": 9,
                      "local_device_ids": [1], "cluster_detection_method": "deactivate",
                      "initialization_timeout": 300}]


def test_missing_slurm_variables_are_one_line(monkeypatch):
    env = {k: v for k, v in PER_GPU.items() if k not in ("SLURM_PROCID", "SLURM_JOB_NODELIST")}
    with pytest.raises(ConfigError) as e:
        distributed.slurm_arguments(DistributedConfig(mode=SLURM), env)
    message = str(e.value)
    assert "\n" not in message and "SLURM_PROCID" in message and "SLURM_JOB_NODELIST" in message
    assert "srun" in message
    with pytest.raises(ConfigError, match="integers"):
        distributed.slurm_arguments(DistributedConfig(mode=SLURM), {**PER_GPU, "SLURM_NTASKS": "2(x8)"})


def test_config_accepts_slurm_and_checks_local_devices():
    assert config.load(None, ["distributed.mode=slurm"]).distributed.mode == SLURM
    assert config.load(None, ["distributed.local_devices=0,3"]).distributed.local_devices == "0,3"
    with pytest.raises(ConfigError, match="local_devices"):
        config.load(None, ["distributed.local_devices=gpu0"])


@pytest.mark.parametrize("size", ["125m", "350m", "1b", "8b"])
def test_gpu_configs_load_and_fit_8_gpu_nodes(size):
    path = REPO / "configs" / "gpu" / f"{size}.yaml"
    required = ["data.path=gs://bucket/prepared"] if size in ("1b", "8b") else []  # they name no default data
    cfg = config.load(path, required)
    assert cfg.distributed.mode == SLURM and cfg.model.dtype == "bfloat16"
    assert cfg.model.attention_impl in ("auto", "pallas")  # the fused kernel where it compiles
    experiment = config.load(REPO / "configs" / "experiments" / f"{size}.yaml", required)
    assert cfg.model.n_layers == experiment.model.n_layers
    for nodes in (1, 2, 4):
        data, fsdp, tensor = mesh_shape(cfg.mesh, 8 * nodes)
        assert 8 % (fsdp * tensor) == 0  # parameter gathers stay inside a node
        assert cfg.data.batch_size % (data * fsdp) == 0
