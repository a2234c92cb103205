"""`jaxorder compile`: ahead-of-time compilation for N forced host devices, memory from the executable."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxorder.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "data.seq_len=32", "data.batch_size=16"]


def compile_json(*args: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "compile", *args, "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def no_jax_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}  # no cache from elsewhere


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The fsdp8 and data8 reports; data8 compiles into a fresh persistent cache (reports["cache"]), which
    the cache test compiles against again."""
    config = str(REPO / "configs" / "experiments" / "l2r_tiny.yaml")
    cache = [f"compile.cache_dir={tmp_path_factory.mktemp('aot') / 'cache'}", "compile.cache_min_seconds=0"]
    meshes = {"fsdp8": ["mesh.data=1", "mesh.fsdp=8"], "data8": ["mesh.data=8", *cache]}
    out = {mesh: compile_json(config, "--devices", "8", *TINY, *over, env=no_jax_env())
           for mesh, over in meshes.items()}
    return {**out, "cache": [config, "--devices", "8", *TINY, "mesh.data=8", *cache]}


def test_parameters_are_split_by_fsdp_and_replicated_by_data(reports):
    fsdp, data = reports["fsdp8"], reports["data8"]
    assert fsdp["devices"] == data["devices"] == 8
    assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    total_bytes = fsdp["params"] * 4 / 1024 ** 3
    assert data["param_gib_per_device"] == pytest.approx(total_bytes, rel=1e-6)
    # every parameter dimension here divides by 8 except the norm scales' replicated leftovers
    assert fsdp["param_gib_per_device"] < 0.2 * data["param_gib_per_device"]
    assert fsdp["opt_state_gib_per_device"] == pytest.approx(2 * fsdp["param_gib_per_device"], rel=0.05)


def test_flops_and_memory_are_reported(reports):
    r = reports["data8"]
    # 6 N per token, per device: the cost analysis sees the local batch of 2 windows x 32 tokens
    assert r["flops_per_step_per_device"] > 6 * r["non_embedding_params"] * 2 * 32 * 0.5
    assert r["temp_gib_per_device"] > 0 and r["peak_gib_per_device"] >= r["argument_gib_per_device"]


def test_bad_config_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "compile",
                           str(REPO / "configs" / "experiments" / "l2r_tiny.yaml"), "model.n_layer=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "compile",
                           str(REPO / "configs" / "experiments" / "l2r_tiny.yaml"), "--devices", "6",
                           "mesh.data=4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "devices" in proc.stderr and "Traceback" not in proc.stderr


def test_tpu_slice_names_map_to_standard_topologies():
    from jaxorder.platform.topology import parse_slice

    v5e = parse_slice("v5e-256")
    assert (v5e.chips, v5e.topology_name, v5e.chips_per_host_bounds) == (256, "v5e:16x16", (2, 2, 1))
    assert parse_slice("v5litepod-16").topology_name == "v5e:4x4"
    assert parse_slice("v6e-8").chips_per_host_bounds == (2, 4, 1)  # one VM of 8 chips
    v5p = parse_slice("v5p-128")  # TensorCores: 2 per chip, one megacore device per chip
    assert (v5p.chips, v5p.topology_name) == (64, "v5p:4x4x4")
    assert parse_slice("v4-8").topology_name == "v4:2x2x1"
    assert parse_slice("v4-256").topology_name == "v4:4x4x8"
    for bad in ("v5e-3", "v5p-4", "v7-8", "v5e", "tpu-8"):
        with pytest.raises(ConfigError, match="--topology"):
            parse_slice(bad)


def test_simulated_slices_are_the_outer_part_of_the_data_axis():
    from jaxorder.platform.sharding import simulated_slices_grid

    grid = simulated_slices_grid(list(range(8)), 2, (2, 2, 1))
    assert grid.shape == (4, 2, 1)
    assert sorted(grid[:2].ravel()) == [0, 1, 2, 3] and sorted(grid[2:].ravel()) == [4, 5, 6, 7]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu: a real TPU compile")
def test_topology_without_libtpu_is_one_notice_and_a_labelled_cpu_estimate_with_two_simulated_slices():
    # v5e-4 x mesh.dcn_data=2: 8 forced host devices, data = 2 slices x 1, fsdp = 4
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "compile",
                           str(REPO / "configs" / "experiments" / "l2r_tiny.yaml"), "--topology", "v5e-4",
                           *TINY, "mesh.dcn_data=2", "mesh.data=1", "mesh.fsdp=-1", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notices = [line for line in proc.stderr.splitlines() if "no TPU compiler here" in line]
    assert len(notices) == 1 and "falling back to a CPU estimate on 8 forced host devices" in notices[0]
    report = json.loads(proc.stdout)
    assert report["target"].startswith("CPU estimate for 2 x v5e-4")
    assert "not a TPU compile" in report["target"]
    assert report["devices"] == 8 and report["slices"] == 2
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert "simulating 2 slices of 4 consecutive devices" in proc.stderr


def test_second_compile_loads_the_train_step_from_the_persistent_cache(reports):
    # the first compile is the data8 report's, into a cache directory of its own
    first, second = reports["data8"]["compile_cache"], compile_json(*reports["cache"], env=no_jax_env())
    assert first["hits"] == 0 and first["requests"] >= 1
    assert second["compile_cache"]["hits"] == second["compile_cache"]["requests"] == first["requests"]
    cache_dir = next(a for a in reports["cache"] if a.startswith("compile.cache_dir=")).split("=", 1)[1]
    assert any(Path(cache_dir).iterdir())


def test_topology_flag_errors_are_one_line(capsys):
    from jaxorder import cli

    config = str(REPO / "configs" / "experiments" / "l2r_tiny.yaml")
    assert cli.main(["compile", config, "--topology", "v5e-8", "--devices", "8"]) == 2
    assert cli.main(["compile", config, "--topology", "v5e-12"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not both" in err[0] and "power of two" in err[1]


def test_relative_cache_dirs_resolve_under_the_run_directory():
    from jaxorder.platform.compile_cache import resolve

    # GCS has no `..`: it must be resolved here, or the cache lands in an object named '..'
    assert resolve("../.jax_cache", "gs://bucket/runs/r1") == "gs://bucket/runs/.jax_cache"
    assert resolve("../.jax_cache", "/tmp/runs/r1") == "/tmp/runs/.jax_cache"
    assert resolve("./cache/x", "/tmp/runs/r1") == "/tmp/runs/r1/cache/x"
    assert resolve("/abs/cache", "/tmp/runs/r1") == "/abs/cache" and resolve("gs://b/c", "/r") == "gs://b/c"


def test_rope_base_bound_is_in_the_report(reports):
    from jaxorder.model.rope import rope_base_lower_bound
    from jaxorder.platform.aot import format_report

    r = reports["data8"]
    assert r["positions"] == "rope"
    assert r["rope_base_bound"] == rope_base_lower_bound(r["head_dim"], r["max_len"])
    assert f"lower bound for max_len {r['max_len']:,}" in format_report(r)
