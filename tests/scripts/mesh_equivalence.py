"""Run under 8 forced host devices: train a few steps on several meshes and write JSON results.

Usage: python mesh_equivalence.py OUT_JSON OBJECTIVE[:MESH,MESH...] ...
(default meshes: all of MESHES, e.g. `bd3:2x2x2,1x2x4`).
"""
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxorder import config as config_lib  # noqa: E402
from jaxorder.training.optimizer import make_optimizer  # noqa: E402
from jaxorder.training.state import init_state, make_placement  # noqa: E402
from jaxorder.training.step import compile_train_step  # noqa: E402

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]
STEPS = 10


def losses(objective: str, mesh: tuple[int, int, int] | None) -> list[float]:
    over = ["model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.max_len=64", "data.seq_len=16",
            "data.batch_size=16", f"objective.name={objective}", "objective.block_size=4",
            "optimizer.lr=1e-2", f"train.steps={STEPS}", "optimizer.warmup_steps=2"]
    if mesh:
        over += [f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}"]
    cfg = config_lib.load(None, over)
    devices = jax.devices() if mesh else jax.devices()[:1]
    optimizer = make_optimizer(cfg)
    placement = make_placement(cfg, optimizer, devices)
    rng = np.random.default_rng(0)
    with placement.active():
        state = jax.jit(lambda: init_state(cfg, optimizer), out_shardings=placement.state)()
        step = compile_train_step(cfg, optimizer, placement)
        out = []
        tokens = rng.integers(0, 256, (cfg.data.batch_size, cfg.data.seq_len), dtype=np.int32)
        for _ in range(STEPS):
            state, metrics = step(state, placement.put_batch(tokens))
            out.append(float(metrics["loss"]))
    return out


def main() -> None:
    out_path, specs = sys.argv[1], sys.argv[2:]
    result = {}
    for spec in specs:
        objective, _, mesh_list = spec.partition(":")
        meshes = [tuple(int(x) for x in m.split("x")) for m in mesh_list.split(",")] if mesh_list else MESHES
        result[objective] = {"single": losses(objective, None)}
        for mesh in meshes:
            result[objective]["x".join(map(str, mesh))] = losses(objective, mesh)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
