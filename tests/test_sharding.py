"""Sharded training equals the single-device run (8 forced host devices, in a subprocess)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError
from jaxorder.platform.sharding import mesh_shape

SCRIPTS = Path(__file__).parent / "scripts"


def run_script(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_mesh_shape_fills_and_checks():
    cfg = config_lib.load(None, ["mesh.data=-1", "mesh.fsdp=2", "mesh.tensor=2"])
    assert mesh_shape(cfg.mesh, 8) == (2, 2, 2)
    with pytest.raises(ConfigError, match="not divisible"):
        mesh_shape(cfg.mesh, 6)
    fixed = config_lib.load(None, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=1"])
    with pytest.raises(ConfigError, match="devices per slice"):
        mesh_shape(fixed.mesh, 8)


LATER_OBJECTIVES = ("bd3", "ao_ar", "latent_order")  # on the two meshes with tensor parallelism
MESHES = ("8x1x1", "2x4x1", "2x2x2", "1x2x4")
# The fast suite: l2r on every mesh (each axis alone and combined), every other objective on 2x2x2 (all
# three axes at once); the remaining pairs are the slow grid. Each pair is one train-step compilation.
CASES = [("l2r", m) for m in MESHES] + [(o, "2x2x2") for o in ("mdm", *LATER_OBJECTIVES)]
MORE_CASES = [("mdm", m) for m in MESHES if m != "2x2x2"] + [(o, "1x2x4") for o in LATER_OBJECTIVES]


def mesh_losses_of(tmp_path_factory, cases) -> dict:
    """objective -> {"single": losses, mesh: losses} for the (objective, mesh) cases, in one subprocess."""
    meshes: dict[str, list[str]] = {}
    for objective, mesh in cases:
        meshes.setdefault(objective, []).append(mesh)
    out = tmp_path_factory.mktemp("mesh") / "losses.json"
    run_script("mesh_equivalence.py", str(out), *(f"{o}:{','.join(m)}" for o, m in meshes.items()))
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def mesh_losses(tmp_path_factory):
    return mesh_losses_of(tmp_path_factory, CASES)


@pytest.fixture(scope="module")
def more_mesh_losses(tmp_path_factory):
    return mesh_losses_of(tmp_path_factory, MORE_CASES)


def check_sharded_equals_single(losses: dict, objective: str, mesh: str) -> None:
    single = np.asarray(losses[objective]["single"])
    sharded = np.asarray(losses[objective][mesh])
    assert len(sharded) == 10
    if objective == "l2r":  # one fixed batch: the loss must fall (the mdm loss is noisy by design)
        assert single[-1] < single[0] - 0.5
    np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("objective, mesh", CASES)
def test_sharded_losses_equal_single_device(mesh_losses, objective, mesh):
    check_sharded_equals_single(mesh_losses, objective, mesh)


# fast: test_sharded_losses_equal_single_device (l2r on these meshes, these objectives on 2x2x2)
@pytest.mark.slow
@pytest.mark.parametrize("objective, mesh", MORE_CASES)
def test_sharded_losses_equal_single_device_on_more_meshes(more_mesh_losses, objective, mesh):
    check_sharded_equals_single(more_mesh_losses, objective, mesh)


def test_checkpoint_restores_onto_another_mesh_and_continues_identically(tmp_path):
    out = tmp_path / "resume.json"
    run_script("mesh_resume.py", str(out), str(tmp_path))
    r = json.loads(out.read_text())
    assert r["resumed_from"] == 6
    np.testing.assert_allclose(r["resumed"], r["uninterrupted"], atol=1e-5, rtol=0)
