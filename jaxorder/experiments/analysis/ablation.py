"""A causal test of the slash heads: zero the top-K slash heads and compare the validation loss change
with zeroing K random heads.

A head is zeroed by a params transform, not a model change: the attention output of layer l is
sum_h o_h W_out[h] (W_out [H, D, d_model]), so setting head h's rows W_out[l][h] to zero removes
exactly that head's contribution to the residual stream and leaves every other computation as it was.
The loss is the run objective's own per-token NLL (nats; the yardstick's `nll`) on validation windows,
all ablations with the same rng (common random numbers: mdm's t-sampled bound draws the same noise
for every ablation, so the differences are not swamped by sampling noise).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.evaluation.runs import load_params
from jaxorder.evaluation.yardstick import make_nll_fn
from jaxorder.experiments.analysis.attention import AttentionAnalysis, input_windows

DEFAULT_DRAWS = 8


def ablate_heads(params: Any, heads: Sequence[tuple[int, int]]) -> Any:
    """`params` with the output-projection rows of each (layer, head) in `heads` set to zero (unrolled
    `layer_<l>` or scanned `layers` layout)."""
    params = jax.tree.map(lambda x: x, params)  # a fresh tree: the caller's params stay intact
    for layer, head in heads:
        if "layers" in params:  # scan_layers: [n_layers, H, D, d]
            attn = params["layers"]["attn"]
            attn["out"] = attn["out"].at[layer, head].set(0.0)
        else:
            attn = params[f"layer_{layer}"]["attn"]
            attn["out"] = attn["out"].at[head].set(0.0)
    return params


def _unfrozen(params: Any) -> Any:
    """Nested plain dicts (so that ablate_heads can assign leaves)."""
    if isinstance(params, dict) or hasattr(params, "items"):
        return {k: _unfrozen(v) for k, v in params.items()}
    return params


def per_window_loss(params: Any, cfg: Config, tokens_NL: np.ndarray, nll_fn: Any) -> np.ndarray:
    """Per-token NLL (nats) of each window [N], with one fixed rng for every call."""
    nll_N = np.asarray(nll_fn(params, tokens_NL, jax.random.key(0)))
    return nll_N / tokens_NL.shape[1]


def slash_ablation(cfg: Config, params: Any, analysis: AttentionAnalysis, tokens_NL: np.ndarray, k: int,
                   draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict:
    """Loss change from zeroing the top-`k` heads by best Δ != 0 slash score, against the mean over
    `draws` random draws of `k` distinct heads (uniform over all heads, slash heads included).

    Standard errors: for the top-K change, over windows of the paired per-window differences; for the
    random heads, over the draws (the spread of which K heads, the quantity the comparison is about)."""
    heads = analysis.table["heads"]
    n_heads = len(heads)
    if not 1 <= k <= n_heads:
        raise ConfigError(f"--ablate-slash {k}: give 1..{n_heads} (the run has {n_heads} heads)")
    if draws < 2:
        raise ConfigError(f"--ablate-draws must be >= 2 for a standard error, got {draws}")
    params = _unfrozen(params)
    nll_fn = make_nll_fn(cfg)
    base_N = per_window_loss(params, cfg, tokens_NL, nll_fn)
    ranked = sorted(heads, key=lambda h: -h["dominant_score"])[:k]
    top = [(h["layer"], h["head"]) for h in ranked]
    top_diff_N = per_window_loss(ablate_heads(params, top), cfg, tokens_NL, nll_fn) - base_N
    rng = np.random.default_rng(seed)
    random_draws, random_deltas = [], []
    for _ in range(draws):
        pick = rng.choice(n_heads, size=k, replace=False)
        chosen = [(heads[i]["layer"], heads[i]["head"]) for i in sorted(pick)]
        loss_N = per_window_loss(ablate_heads(params, chosen), cfg, tokens_NL, nll_fn)
        random_draws.append([list(h) for h in chosen])
        random_deltas.append(float((loss_N - base_N).mean()))
    n = len(base_N)
    deltas = np.asarray(random_deltas)
    return {
        "k": k, "draws": draws, "windows": int(n), "unit": "nats per token",
        "loss_base": float(base_N.mean()),
        "top_heads": [list(h) for h in top],
        "top_scores": [h["dominant_score"] for h in ranked],
        "delta_top": float(top_diff_N.mean()),
        "delta_top_se": float(top_diff_N.std(ddof=1) / np.sqrt(n)) if n > 1 else None,  # JSON: no NaN
        "delta_random_mean": float(deltas.mean()),
        "delta_random_se": float(deltas.std(ddof=1) / np.sqrt(draws)),
        "random_heads": random_draws,
        "random_deltas": random_deltas,
    }


def run_slash_ablation(run_dir: str | Path, analysis: AttentionAnalysis, k: int, draws: int = DEFAULT_DRAWS,
                       windows: int = 32, seed: int = 0) -> dict:
    """slash_ablation on a run's newest checkpoint and `windows` of its validation windows."""
    cfg, params, _ = load_params(Path(run_dir))
    tokens_NL = input_windows(cfg, "corpus", windows, seed)
    return slash_ablation(cfg, params, analysis, tokens_NL, k, draws, seed)


def ablation_text(r: dict) -> str:
    heads = ", ".join(f"L{layer}H{head}" for layer, head in r["top_heads"])
    top_se = "n/a" if r["delta_top_se"] is None else f"{r['delta_top_se']:.4f}"
    return (f"ablation ({r['unit']}, {r['windows']} validation windows): base loss {r['loss_base']:.4f}\n"
            f"  zero top-{r['k']} slash heads ({heads}): {r['delta_top']:+.4f} ± {top_se}\n"
            f"  zero {r['k']} random heads (mean of {r['draws']} draws): {r['delta_random_mean']:+.4f} ± "
            f"{r['delta_random_se']:.4f}\n")
