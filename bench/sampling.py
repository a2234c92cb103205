"""Sampling throughput on this machine.

    python bench/sampling.py            # mdm: steps 8, 32, 128 at length 128, batch 8, every rule
    python bench/sampling.py --quick    # steps 8, 32 at batch 4

Section "mdm": tokens/s of the masked-diffusion samplers (jaxorder.sampling.mdm) vs the number
of steps, on the `small` model size (configs/model/small.yaml: d_model 256, 6 layers, 8 heads)
with randomly initialised weights (speed does not depend on the weights, except for the
threshold sampler, see its note). Generated tokens / wall time of one compiled call (the loop
over all steps; compilation excluded). The time is ~ steps x one bidirectional forward pass of
[B, L]: the commitment rule itself is noise next to the model. `nfe` = forward passes actually
run (ancestral reuses the previous pass when a step reveals nothing in the whole batch, MDLM's
cache; threshold stops when every row is complete).

Section "ar" (AR decoding with vs without the KV cache at 128 and 512 tokens) belongs to the AR
samplers and is added with them (see SECTIONS at the bottom).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import mdm

SMALL = Path(__file__).resolve().parents[1] / "configs" / "model" / "small.yaml"


def machine_line() -> str:
    dev = jax.devices()[0]
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPU cores visible, "
            f"JAX {jax.__version__} backend '{jax.default_backend()}' ({dev.device_kind}), load average {load}")


def bench_mdm(quick: bool, run_dir: str | None = None) -> None:
    B, L = (4, 128) if quick else (8, 128)
    steps_list = (8, 32) if quick else (8, 32, 128)
    if run_dir:  # a trained mdm run instead of random weights (the threshold sampler then stops early)
        from jaxorder.train import load_params
        cfg, params, _ = load_params(Path(run_dir))
        L = min(L, cfg.model.max_len)
        what = f"run {Path(run_dir).name}"
    else:
        cfg = config_lib.load(SMALL, ["objective.name=mdm", f"data.seq_len={L}"])
        params = model.init_params(cfg.model, jax.random.key(0))
        what = "`small` model"
    n_params = model.count_params(params)
    tokens = jnp.full((B, L), special_ids(cfg.model).mask, jnp.int32)
    key = jax.random.key(0)
    rows = [("ancestral", {}), ("confidence", {}), ("margin", {}), ("entropy", {}), ("threshold", {}),
            ("confidence", {"fused": True})]
    print("=" * 100)
    print(f"mdm samplers: {what} ({cfg.model.d_model} d_model, {cfg.model.n_layers} layers, "
          f"{cfg.model.n_heads} heads, {n_params / 1e6:.2f}M params, "
          f"{'trained' if run_dir else 'random'} weights), length {L}, batch {B}, "
          f"T = 1, high-precision noise")
    print("  tokens/s = B*L / wall time of one compiled sampling call (compile excluded); s/pass = time / nfe")
    header = f"  {'sampler':<34}" + "".join(f"{f'steps={s}':>26}" for s in steps_list)
    print(header)
    print(f"  {'':<34}" + "".join(f"{'tok/s    nfe   s/pass':>26}" for _ in steps_list))
    for name, extra in rows:
        label = name + (" (fused, CPU reference)" if extra.get("fused") and jax.default_backend() == "cpu"
                        else " (fused)" if extra.get("fused") else "")
        cells = []
        for steps in steps_list:
            sc = mdm.SamplerConfig(name=name, steps=steps, temperature=1.0, threshold=0.9, **extra)
            run = mdm.compile_sample(params, cfg, tokens, key, sc)
            t0 = time.perf_counter()
            out = jax.block_until_ready(run())
            dt = time.perf_counter() - t0
            nfe = int(out["nfe"])
            assert bool(np.all(np.asarray(out["complete"])))
            cells.append(f"{B * L / dt:>10.0f} {nfe:>6d} {dt / max(nfe, 1):>8.3f}")
        print(f"  {label:<34}" + "".join(f"{c:>26}" for c in cells), flush=True)
    if not run_dir:
        print("  note: random weights give every token p ~ 1/256, so `threshold` (0.9) never fires and takes all")
        print("  its steps like `confidence`; with a trained model (--run RUN_DIR) it stops early.")
    print("  Ancestral reuses the last pass (nfe < steps) only when a step reveals nothing in every row of the")
    print("  batch (~e^-B at steps = L): rare at B = 8. The fused row on CPU runs pallas_kernels' plain-JAX")
    print("  reference, not the kernel.")


# ----------------------------------------------------------------------------------------------
# AR decoding with vs without the KV cache (128 and 512 generated tokens, `small` model): to be
# added here together with the AR/bd3/ao_ar KV-cache samplers, as `bench_ar(quick)`, appended
# to SECTIONS.
# ----------------------------------------------------------------------------------------------

SECTIONS = {"mdm": bench_mdm}  # add "ar": bench_ar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller batch")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    parser.add_argument("--run", help="mdm section: a trained mdm run directory instead of random `small` weights")
    args = parser.parse_args()
    print(f"machine: {machine_line()}")
    print("  NOTE: the machine is shared and busy (other jobs run concurrently): timings are noisy, "
          "compare within one run only.")
    if args.only in (None, "mdm"):
        bench_mdm(args.quick, args.run)
    # (the AR section will be called here)


if __name__ == "__main__":
    main()
