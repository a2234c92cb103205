"""Roofline model and measured timings for the pallas_kernels (fused vs unfused).

    python bench/kernels.py            # roofline tables + measured times at the `small` shapes
    python bench/kernels.py --quick    # smaller measured shapes

Part 1 (model): per attention layer (forward and backward) and per sampling step, FLOPs, HBM
bytes and roofline time max(FLOPs / peak, bytes / bandwidth) on TPU v5p, v6e and H100, for
  fused:   pallas_kernels.rope_attention (RoPE in-kernel, flash, masked tiles skipped) and
           pallas_kernels.mdm_sample_step (logits never written),
  unfused: RoPE as a separate pass, attention with the score/probability matrices in HBM,
           logits materialized in float32 and read twice (logsumexp pass + sampling pass).
Part 2 (measured): wall time of the kernel vs the plain-JAX reference on *this* backend.
On CPU the kernel runs in Pallas interpret mode (a scan over the grid): those timings only show
the code runs; they say nothing about accelerator speed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from jaxorder.platform.host_memory import configure_host_malloc
from pallas_kernels import reference as ref
from pallas_kernels.attention_tpu import padded_head_dim, step_tables

# Public peak numbers (bf16 dense matmul, HBM bandwidth) per chip.
PEAKS = {
    "TPU v5p": (459e12, 2765e9, "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, HBM2e 2765 GB/s"),
    "TPU v6e": (918e12, 1640e9, "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, HBM 1640 GB/s"),
    "H100 SXM": (989e12, 3350e9, "NVIDIA H100 datasheet: 989 TFLOP/s bf16 dense (1979 "
                                 "sparse), HBM3 3.35 TB/s"),
}

# Model shapes (from the issue / configs); kv = number of kv heads.
MODELS = {
    "small": dict(d_model=256, heads=8, kv=8, seq=256, batch=32, vocab=260),
    "1b": dict(d_model=2048, heads=16, kv=16, seq=2048, batch=8, vocab=32000),
    "8b": dict(d_model=4096, heads=32, kv=8, seq=8192, batch=1, vocab=128256),
}
BYTES = 2          # bf16 activations and weights
BQ = BK = 128      # attention tiles assumed on accelerators
ROW_TILES = (512, 1024)  # sampling-kernel rows per tile (the unembedding is streamed once per row tile)


def _roof(flops, nbytes):
    return {name: max(flops / f, nbytes / bw) for name, (f, bw, _) in PEAKS.items()}


def attention_costs(m, mask_name):
    B, H, K = m["batch"], m["heads"], m["kv"]
    D = m["d_model"] // H
    L = m["seq"] if mask_name == "causal" else 2 * m["seq"]  # bd3 runs on the 2n layout
    S = L
    mask = pk.causal() if mask_name == "causal" else pk.bd3(16)
    live = 1.0 - pk.tile_skip_fraction(mask, L, S, BQ, BK)
    nq, nk = -(-L // BQ), -(-S // BK)
    qb, kvb = B * L * H * D * BYTES, B * S * K * D * BYTES
    dense = 4.0 * B * H * L * S * D                   # QK^T and PV
    rope_fl = 6.0 * B * (L * H + S * K) * D
    BHLS = B * H * L * S
    out = {}
    # forward
    fused_b = qb + qb + B * H * L * 4 + B * H * nq * live * 2 * S * D * BYTES  # q, o, lse, K/V per live tile
    unf_b = (2 * (qb + kvb)                            # RoPE pass: read q,k write rotated
             + qb + 2 * kvb                            # attention reads q_rot, k_rot, v
             + BHLS * (4 + 4 + BYTES + BYTES)           # scores f32 write+read, probs write+read
             + qb)                                      # out
    out["fwd"] = dict(fused=(dense * live + rope_fl, fused_b), unfused=(dense + rope_fl, unf_b))
    # backward (recompute S, then dP, dV, dQ, dK: 2.5x the forward matmuls)
    fused_bb = (3 * qb + 2 * B * H * L * 4 + B * H * nq * live * 2 * S * D * BYTES   # dq kernel
                + 3 * kvb + B * K * nk * live * (H // K) * L * (2 * D * BYTES + 8))   # dkv kernel
    unf_bb = (BHLS * (BYTES + BYTES + 4 + 4 + 4 + 4 + 4)  # read P twice, dP write+read, dS write + 2 reads
              + 3 * qb + 3 * kvb + 2 * (qb + kvb))        # inputs/grads + RoPE backward pass
    out["bwd"] = dict(fused=(2.5 * dense * live + 2 * rope_fl, fused_bb),
                      unfused=(2.5 * dense + 2 * rope_fl, unf_bb))
    # TPU variant: the kernels run on head dim Dp (each RoPE half zero-padded, Dp % 128 == 0) in the
    # [B, H, L, Dp] layout, laid out by XLA passes outside (read unpadded, write padded, and back).
    f = padded_head_dim(D) / D
    layout_fwd = (1 + f) * (qb + 2 * kvb) + (1 + f) * qb                  # q, k, v in; out back
    layout_bwd = (1 + f) * (2 * qb + 2 * kvb) + (1 + f) * (qb + 2 * kvb)  # q, do, k, v in; dq, dk, dv back
    out["fwd"]["fused-tpu"] = (dense * live * f + rope_fl * f,
                               f * (fused_b - B * H * L * 4) + B * H * L * 4 + layout_fwd)
    out["bwd"]["fused-tpu"] = (f * (2.5 * dense * live + 2 * rope_fl), f * fused_bb + layout_bwd)
    return out, live


def sampling_costs(m):
    N, d, V = m["batch"] * m["seq"], m["d_model"], m["vocab"]
    flops = 2.0 * N * d * V
    h_b, w_b = N * d * BYTES, d * V * BYTES
    out = {"unfused": (flops, h_b + w_b + N * V * 4 * 3 + 6 * 4 * N)}
    for bn in ROW_TILES:
        out[f"fused/{bn}"] = (flops, h_b + -(-N // bn) * w_b + 7 * 4 * N)
    return out, 2 * 20 * 5 * N * V  # ~uint32 ops of noise


def _fmt_t(t):
    return f"{t * 1e6:9.1f} us" if t < 1e-3 else f"{t * 1e3:9.2f} ms"


def print_model():
    print("=" * 100)
    print("Part 1: roofline model (per chip, bf16; time = max(FLOPs/peak, bytes/HBM bandwidth))")
    for name, (_, _, src) in PEAKS.items():
        print(f"  {name:9s} {src}")
    print(f"  attention tiles {BQ}x{BK}; bd3 block size 16 on the 2n layout; sampling "
          f"'fused/bn' = row tile bn")
    hdr = f"{'model':6s} {'what':22s} {'variant':10s} {'GFLOP':>10s} {'MB moved':>10s} " + \
          " ".join(f"{n:>12s}" for n in PEAKS)
    print(hdr)
    print("-" * len(hdr))
    for mname, m in MODELS.items():
        for mask_name in ("causal", "bd3"):
            costs, live = attention_costs(m, mask_name)
            for phase in ("fwd", "bwd"):
                for var in ("unfused", "fused", "fused-tpu"):
                    fl, by = costs[phase][var]
                    r = _roof(fl, by)
                    what = f"attn/layer {mask_name} {phase}"
                    print(f"{mname:6s} {what:22s} {var:10s} {fl / 1e9:10.2f} {by / 1e6:10.1f} " +
                          " ".join(f"{_fmt_t(r[n]):>12s}" for n in PEAKS))
            Lm = m['seq'] * (1 if mask_name == 'causal' else 2)
            _, kv_cnt, kv_steps, _, q_cnt, q_steps = step_tables(
                pk.causal() if mask_name == "causal" else pk.bd3(16), Lm, Lm, BQ, BK)
            print(f"{'':6s}   tiles skipped ({mask_name}, L={Lm}): {1 - live:.3f}; TPU variant grid steps "
                  f"per (batch, head): fwd/dQ {len(kv_cnt) * kv_steps}, dK/dV {len(q_cnt) * q_steps}, "
                  f"computing {int(kv_cnt.sum())}")
        costs, noise_ops = sampling_costs(m)
        for var in costs:
            fl, by = costs[var]
            r = _roof(fl, by)
            print(f"{mname:6s} {'mdm_sample_step':22s} {var:10s} {fl / 1e9:10.2f} {by / 1e6:10.1f} " +
                  " ".join(f"{_fmt_t(r[n]):>12s}" for n in PEAKS))
        print(f"{'':6s}   sampling noise: ~{noise_ops / 1e9:.1f} G uint32 vector ops (2 Threefry calls per "
              f"logit, VPU, not in the roofline; unfused jax.random.gumbel needs 1 call per logit)")
    print("  fused-tpu = the TPU variant (attention_tpu): head dim padded per RoPE half to a multiple of 128 "
          "(D=32 -> 4x, D=64 -> 2x the\n  matmul FLOPs and tile bytes) plus the XLA layout passes "
          "([B,L,H,D] <-> padded [B,H,L,Dp]); grid-step overhead not modelled.")
    print("Notes: unfused attention = XLA with [B,H,L,S] f32 scores and bf16 probabilities in HBM "
          "(no tile skipping);\n  fused K/V are re-read once per live q tile (GQA heads re-read "
          "their shared kv head). Unfused sampling writes f32 logits once and reads them twice;\n"
          "  fused sampling streams the unembedding once per row tile, so it moves fewer bytes only when "
          "row tile > ~d_model/6.")


def _time(fn, *args, reps=3):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return min(ts)


def matmul_peak():
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * 2048**3 / _time(f, a)


def print_measured(quick):
    backend = jax.default_backend()
    interp = backend == "cpu"
    print("=" * 100)
    print(f"Part 2: measured on backend '{backend}' ({jax.devices()[0].device_kind})")
    if interp:
        print("  !! CPU: the Pallas kernels run in INTERPRET mode (a scan over the grid). These timings "
              "only show that the code runs;\n  !! they say NOTHING about accelerator speed. Only "
              "correctness (tests/test_pallas_*.py) is meaningful here.")
    print(f"  machine matmul peak (2048^3 float32): {matmul_peak() / 1e9:.0f} GFLOP/s")
    m = MODELS["small"]
    B = 4 if quick else m["batch"]
    L, H, D, V, d = m["seq"], m["heads"], m["d_model"] // m["heads"], m["vocab"], m["d_model"]
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, L, H, D))
    k = jax.random.normal(ks[1], (B, L, H, D))
    v = jax.random.normal(ks[2], (B, L, H, D))
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    kw = dict(mask=pk.causal(), block_q=128, block_k=128)
    kern = dict(interpret=True) if interp else dict(interpret=None)
    f_k = jax.jit(lambda q, k, v: pk.rope_attention(q, k, v, pos, pos, **kw, **kern))
    f_r = jax.jit(lambda q, k, v: ref.rope_attention(q, k, v, pos, pos, **kw))

    def loss(f):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))

    g_k = loss(lambda q, k, v: pk.rope_attention(q, k, v, pos, pos, **kw, **kern))
    g_r = loss(lambda q, k, v: ref.rope_attention(q, k, v, pos, pos, **kw))
    rows = [("attention fwd", _time(f_k, q, k, v), _time(f_r, q, k, v)),
            ("attention fwd+bwd", _time(g_k, q, k, v), _time(g_r, q, k, v))]
    h = jax.random.normal(ks[3], (B, L, d))
    w = jax.random.normal(ks[0], (d, V)) * d**-0.5
    tok, msk = jnp.zeros((B, L), jnp.int32), jnp.ones((B, L), bool)
    skw = dict(temperature=1.0, rule="confidence", k=8, forbidden_ids=(V - 1,))
    s_k = jax.jit(lambda h, w, key: pk.mdm_sample_step(h, w, tok, msk, key, vocab_tile=128, row_tile=512,
                                                       **skw, **kern))
    s_r = jax.jit(lambda h, w, key: ref.mdm_sample_step(h, w, tok, msk, key, float64=False, **skw))
    rows.append(("mdm_sample_step", _time(s_k, h, w, ks[1]), _time(s_r, h, w, ks[1])))
    with jax.enable_x64(True):
        s_r64 = jax.jit(lambda h, w, key: ref.mdm_sample_step(h, w, tok, msk, key, **skw))
        t64 = _time(s_r64, h, w, ks[1])
    print(f"  shapes: small config, batch {B}: q/k/v [{B},{L},{H},{D}] causal, blocks 128; "
          f"sampling hidden [{B},{L},{d}] vocab {V}")
    print(f"  {'op':22s} {'kernel' + (' (interpret)' if interp else ''):>22s} "
          f"{'reference':>12s} {'ratio':>8s}")
    for name, tk, tr in rows:
        print(f"  {name:22s} {_fmt_t(tk):>22s} {_fmt_t(tr):>12s} {tk / tr:8.1f}x")
    print(f"  {'mdm_sample_step f64 ref':22s} {'':>22s} {_fmt_t(t64):>12s}")
    for mask_name, mask, Lm in (("causal", pk.causal(), L), ("bd3(16)", pk.bd3(16), 2 * L)):
        print(f"  tiles skipped, {mask_name} L={Lm} blocks 128x128: "
              f"{pk.tile_skip_fraction(mask, Lm, Lm, 128, 128):.3f}; blocks 32x32: "
              f"{pk.tile_skip_fraction(mask, Lm, Lm, 32, 32):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 4 instead of 32 for the measured part")
    ap.add_argument("--model-only", action="store_true", help="skip the measured part")
    args = ap.parse_args()
    print(f"# host malloc: {configure_host_malloc()}")
    print_model()
    if not args.model_only:
        print_measured(args.quick)


if __name__ == "__main__":
    main()
