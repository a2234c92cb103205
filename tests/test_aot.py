"""`jaxorder compile`: ahead-of-time compilation for N forced host devices, memory from the executable."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "data.seq_len=32", "data.batch_size=16"]


def compile_json(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jaxorder.cli", "compile", *args, "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reports():
    config = str(REPO / "configs" / "experiments" / "l2r_tiny.yaml")
    return {mesh: compile_json(config, "--devices", "8", *TINY, *over)
            for mesh, over in {"fsdp8": ["mesh.data=1", "mesh.fsdp=8"], "data8": ["mesh.data=8"]}.items()}


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
