"""Attention diagnostics: slash (fixed-offset diagonal) heads, rank-one queries/keys, entropy, sinks.

After Cheng et al. 2026 ("Demystifying the Slash Pattern in Attention: The Role of RoPE"): heads
whose attention concentrates on a fixed relative offset, that persist on random tokens, and whose
pre-RoPE queries and keys are nearly rank one. Here the same measurements are taken per layer and
head of a jaxorder run, so that causal (l2r/r2l) and bidirectional (mdm) models can be compared.

Capture. `capture_attention` runs the unchanged model with Flax's "intermediates" collection
mutable, which collects the q and k the Attention module sows before and after RoPE (sowing is a
no-op in training, where the collection is immutable). The post-softmax maps are recomputed from
the post-RoPE q/k exactly as the model's XLA path does: logits q.k / sqrt(head_dim), the mask kind
of the run's objective, softmax in float32 (q and k are upcast to float32 first, so bfloat16 runs
differ from the model's own path by bfloat16 rounding only).

Measurements (per layer and head, pooled over the windows of the batch):
  * slash score s(Δ), Δ = key index - query index in the model's input positions: the attention
    mass on the Δ-diagonal, averaged over the rows that have that diagonal (0 <= i+Δ < L and the
    mask allows it). Δ > 0 exists for bidirectional models only (NaN / null for causal ones). For
    r2l runs positions are those of the reversed window (Δ = -1 is the next token of the text); for
    l2r/r2l the input is [BOS, x_0..x_{L-2}] as in training, so Δ = 0 is the latest token seen.
    Any-order runs (ao_ar, latent_order) are read in their identity order (the same input, with
    target positions); bd3 runs in the training layout [x_t ; x], where Δ counts slots of that 2n
    layout (within a half while |Δ| < n).
  * dominant offset: argmax of s(Δ) over Δ != 0 (the first on ties), its score, and separately the
    self score s(0). Slash-dominant means: best Δ != 0 score >= threshold. Δ = 0 is excluded
    because the slash heads of the paper sit at fixed *nonzero* offsets (a head that attends to
    itself moves no information between positions: it acts like a wider MLP input, and in a
    bidirectional model it is the trivial way to read the token at its own position), and because
    with Δ = 0 included almost every head of a causal model near the start of training would count.
    Both numbers are reported, so either reading can be made from the table.
  * rank-one-ness of the pre-RoPE Q (and K): σ1² / Σσ² of the uncentred [tokens, head_dim] matrix
    (all windows' tokens stacked): 1 when all queries are multiples of one vector, 1/head_dim for
    isotropic ones.
  * entropy (nats) of each attention row and the entropy normalised by log(#keys the row may
    see), and the sink mass: the attention on key 0. Both are averaged over rows 1..L-1 (row 0 of a
    causal map is trivially one-hot on key 0, so it is left out for every mask kind alike).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import objectives
from jaxorder.config import Config, ConfigError, ModelConfig
from jaxorder.data import make_data
from jaxorder.evaluation.runs import load_params
from jaxorder.model.attention import attention_mask
from jaxorder.model.transformer import Transformer, cast_params

INPUTS = ("corpus", "random")
DEFAULT_MAX_OFFSET = 16
DEFAULT_WINDOWS = 32
# Default threshold on the best Δ != 0 slash score for "slash-dominant" (a config field
# eval.slash_threshold is proposed for the sweep report's summary line).
DEFAULT_SLASH_THRESHOLD = 0.5


def supported(cfg: Config) -> bool:
    """Whether the attention analysis knows the network input of cfg's objective."""
    return objectives.of(cfg).analysis_inputs is not None


def _analysis_inputs(cfg: Config):
    view = objectives.of(cfg).analysis_inputs
    if view is None:
        able = [o.name for o in objectives.all_objectives() if o.analysis_inputs is not None]
        raise ConfigError(f"attention analysis supports runs of {', '.join(able)}; objective "
                          f"'{cfg.objective.name}' has no analysis input "
                          f"(block-diffusion/permutation layouts)")
    return view


# ----------------------------------------------------------------------------- capture

@dataclasses.dataclass
class Capture:
    """What one analysed forward pass gives (numpy, float32)."""

    logits: np.ndarray  # [B, L, V], the model's own output
    q_pre: np.ndarray  # [n_layers, B, L, H, D] queries before RoPE
    k_pre: np.ndarray  # [n_layers, B, L, H, D]
    probs: np.ndarray  # [n_layers, B, H, L, L] post-softmax attention (recomputed, float32)
    mask: np.ndarray  # [L, L] bool, True where query i may attend to key j


def attention_probs(q_BLHD: jnp.ndarray, k_BLHD: jnp.ndarray, mask_LL: jnp.ndarray) -> jnp.ndarray:
    """Post-softmax attention [B, H, L, L] from post-RoPE q/k: scale 1/sqrt(D), softmax in float32."""
    scale = q_BLHD.shape[-1] ** -0.5
    logits = jnp.einsum("blhd,bshd->bhls", q_BLHD.astype(jnp.float32), k_BLHD.astype(jnp.float32)) * scale
    logits = jnp.where(mask_LL, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnums=(1, 4))
def _capture(params, model_cfg: ModelConfig, tokens_BL, positions_BL, mask_kind: str, targets_BL=None):
    logits, state = Transformer(model_cfg).apply({"params": cast_params(params, model_cfg)}, tokens_BL,
                                                 positions_BL, mask_kind, targets_BL,
                                                 mutable=["intermediates"])
    inter = state["intermediates"]
    if model_cfg.scan_layers:  # nn.scan stacks what each layer sows on a leading layer axis
        get = lambda name: inter["layers"]["attn"][name][0]  # noqa: E731 - sow stores a tuple
    else:
        layers = [inter[f"layer_{i}"]["attn"] for i in range(model_cfg.n_layers)]
        get = lambda name: jnp.stack([layer[name][0] for layer in layers])  # noqa: E731
    mask_LL = attention_mask(mask_kind, tokens_BL.shape[1])
    q_post, k_post = get("q_post_rope"), get("k_post_rope")
    probs = jnp.stack([attention_probs(q_post[i], k_post[i], mask_LL) for i in range(model_cfg.n_layers)])
    return logits, get("q_pre_rope"), get("k_pre_rope"), probs, mask_LL


def capture_attention(params: Any, model_cfg: ModelConfig, tokens_BL, positions_BL,
                      mask_kind: str, target_positions_BL=None) -> Capture:
    """Runs the model once with intermediates capture: its logits, pre-RoPE q/k and attention maps
    (`target_positions_BL`: any-order models' target positions)."""
    params = nn.meta.unbox(params)
    targets = None if target_positions_BL is None else jnp.asarray(target_positions_BL)
    out = _capture(params, model_cfg, jnp.asarray(tokens_BL), jnp.asarray(positions_BL), mask_kind, targets)
    logits, q_pre, k_pre, probs, mask = (np.asarray(x) for x in jax.device_get(out))
    return Capture(logits=logits, q_pre=q_pre, k_pre=k_pre, probs=probs, mask=mask.astype(bool))


# ----------------------------------------------------------------------------- measurements

def slash_scores(probs_BHLL: np.ndarray, mask_LL: np.ndarray, max_offset: int) -> np.ndarray:
    """[H, 2*max_offset+1] slash score per head for Δ = -max_offset..max_offset (NaN where no row has
    the Δ-diagonal under the mask); mean of the Δ-diagonal over the rows that have it and the batch."""
    probs = np.asarray(probs_BHLL, dtype=np.float64)
    L = probs.shape[-1]
    out = np.full((probs.shape[1], 2 * max_offset + 1), np.nan)
    for j, delta in enumerate(range(-max_offset, max_offset + 1)):
        if abs(delta) >= L:
            continue
        allowed = np.diagonal(mask_LL, offset=delta)
        if not allowed.any():
            continue
        diag = np.diagonal(probs, offset=delta, axis1=-2, axis2=-1)  # [B, H, L-|Δ|]
        out[:, j] = diag[..., allowed].mean(axis=(0, 2))
    return out


def dominant_offset(scores_HO: np.ndarray, max_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Best Δ != 0 per head and its score (Δ = 0 excluded; the first, most negative Δ on ties)."""
    offsets = np.arange(-max_offset, max_offset + 1)
    s = np.where(offsets[None, :] == 0, -np.inf, np.nan_to_num(scores_HO, nan=-np.inf))
    best = np.argmax(s, axis=1)
    return offsets[best], s[np.arange(len(best)), best]


def rank_one_ness(x_BLHD: np.ndarray) -> np.ndarray:
    """σ1² / Σσ² per head [H] of the uncentred [B*L, D] matrix of each head's vectors."""
    x = np.asarray(x_BLHD, dtype=np.float64)
    B, L, H, D = x.shape
    mats = x.transpose(2, 0, 1, 3).reshape(H, B * L, D)
    s2 = np.linalg.svd(mats, compute_uv=False) ** 2  # [H, min(B*L, D)]
    total = s2.sum(axis=1)
    return np.where(total > 0, s2[:, 0] / np.where(total > 0, total, 1.0), np.nan)


def entropy_and_sink(probs_BHLL: np.ndarray,
                     mask_LL: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per head [H]: mean row entropy (nats), mean entropy / log(#allowed keys), mean mass on key 0;
    averaged over rows 1..L-1 and the batch."""
    p = np.asarray(probs_BHLL, dtype=np.float64)[..., 1:, :]  # rows 1..L-1
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)  # [B, H, L-1]
    n_keys = np.asarray(mask_LL)[1:].sum(-1)  # [L-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(n_keys > 1, ent / np.log(np.maximum(n_keys, 2)), np.nan)
    return ent.mean(axis=(0, 2)), np.nanmean(norm, axis=(0, 2)), p[..., 0].mean(axis=(0, 2))


def uniform_baseline(mask_LL: np.ndarray, max_offset: int) -> np.ndarray:
    """Slash scores [2*max_offset+1] of a head that attends uniformly to every allowed key."""
    m = np.asarray(mask_LL, dtype=np.float64)
    probs = m / m.sum(-1, keepdims=True)
    return slash_scores(probs[None, None], mask_LL, max_offset)[0]


def slash_dominant_fraction(heads: Sequence[dict] | dict,
                            threshold: float = DEFAULT_SLASH_THRESHOLD) -> float:
    """Share of heads whose best Δ != 0 slash score is >= threshold.

    `heads`: the "heads" list of an analysis table (or the table itself), e.g. read from heads.json.
    """
    if isinstance(heads, dict):
        heads = heads["heads"]
    if not heads:
        return float("nan")
    return sum(h["dominant_score"] >= threshold for h in heads) / len(heads)


# ----------------------------------------------------------------------------- inputs and runs

def model_inputs(tokens_BL: np.ndarray, cfg: Config, mask_rate: float = 0.0,
                 seed: int = 0) -> tuple[np.ndarray, str, float]:
    """The model's input for windows `tokens_BL` as the run's objective builds it in training, its
    mask kind and the mask rate applied (the objective's `analysis_inputs`; e.g. mdm replaces tokens
    by MASK with probability `mask_rate`, causal runs see clean windows: rate 0)."""
    return analysis_view(tokens_BL, cfg, mask_rate, seed)[:3]


def analysis_view(tokens_BL: np.ndarray, cfg: Config, mask_rate: float = 0.0,
                  seed: int = 0) -> tuple[np.ndarray, str, float, np.ndarray, np.ndarray | None]:
    """model_inputs plus the position ids [N, L'] (0..L'-1 unless the objective gives its own: bd3's
    2n layout repeats 0..n-1, any-order models read the identity order) and target positions (any-order
    models) or None."""
    view = _analysis_inputs(cfg)(np.asarray(tokens_BL, dtype=np.int32), cfg, mask_rate, seed)
    model_in, mask_kind, rate = view[:3]
    positions = (view[3] if len(view) > 3 else
                 np.broadcast_to(np.arange(model_in.shape[1], dtype=np.int32), model_in.shape))
    targets = view[4] if len(view) > 4 else None
    return model_in, mask_kind, rate, np.asarray(positions, np.int32), targets


def input_windows(cfg: Config, inputs: str, windows: int, seed: int = 0) -> np.ndarray:
    """[N, L] token windows: validation windows spread over the validation text (corpus) or
    uniformly random non-special ids (random); N <= windows when the validation text is short."""
    L = cfg.data.seq_len
    if inputs == "random":
        n_regular = cfg.model.vocab_size - 4  # the last four ids are PAD, MASK, BOS, EOS
        return np.random.default_rng(seed).integers(0, n_regular, size=(windows, L), dtype=np.int32)
    data = make_data(cfg.data)
    batches = data.val_batches(max(1, -(-windows // data.global_batch_size)))
    return np.concatenate(batches, axis=0)[:windows]


@dataclasses.dataclass
class AttentionAnalysis:
    table: dict  # JSON-able: run info, "summary", "heads" (one dict per layer and head)
    mean_probs: np.ndarray  # [n_layers, H, L, L] attention maps averaged over the windows
    scores: np.ndarray  # [n_layers, H, 2*max_offset+1] slash scores


def analyze_capture(cap: Capture, max_offset: int,
                    threshold: float = DEFAULT_SLASH_THRESHOLD) -> AttentionAnalysis:
    """All per-head measurements of one capture."""
    n_layers, _, H, L, _ = cap.probs.shape
    max_offset = min(max_offset, L - 1)
    heads, all_scores = [], []
    for layer in range(n_layers):
        scores = slash_scores(cap.probs[layer], cap.mask, max_offset)
        best_d, best_s = dominant_offset(scores, max_offset)
        r1q, r1k = rank_one_ness(cap.q_pre[layer]), rank_one_ness(cap.k_pre[layer])
        ent, ent_norm, sink = entropy_and_sink(cap.probs[layer], cap.mask)
        all_scores.append(scores)
        for h in range(H):
            heads.append({
                "layer": layer, "head": h,
                "dominant_offset": int(best_d[h]), "dominant_score": float(best_s[h]),
                "self_score": float(scores[h, max_offset]),
                "rank1_q": float(r1q[h]), "rank1_k": float(r1k[h]),
                "entropy": float(ent[h]), "entropy_norm": float(ent_norm[h]), "sink_mass": float(sink[h]),
                "slash_dominant": bool(best_s[h] >= threshold),
                "slash_scores": [_finite_or_none(x) for x in scores[h]],
            })
    summary = {
        "heads": len(heads),
        "slash_threshold": threshold,
        "slash_dominant_fraction": slash_dominant_fraction(heads, threshold),
        "max_dominant_score": max(h["dominant_score"] for h in heads),
        "mean_dominant_score": float(np.mean([h["dominant_score"] for h in heads])),
        "mean_self_score": float(np.mean([h["self_score"] for h in heads])),
        "mean_rank1_q": float(np.mean([h["rank1_q"] for h in heads])),
        "mean_rank1_k": float(np.mean([h["rank1_k"] for h in heads])),
        "mean_entropy_norm": float(np.mean([h["entropy_norm"] for h in heads])),
        "mean_sink_mass": float(np.mean([h["sink_mass"] for h in heads])),
    }
    table = {
        "max_offset": max_offset,
        "offsets": list(range(-max_offset, max_offset + 1)),
        "uniform_baseline": [_finite_or_none(x) for x in uniform_baseline(cap.mask, max_offset)],
        "summary": summary,
        "heads": heads,
    }
    return AttentionAnalysis(table=table, mean_probs=cap.probs.mean(axis=1), scores=np.stack(all_scores))


def analyze_run(run_dir: str | Path, inputs: str = "corpus", max_offset: int = DEFAULT_MAX_OFFSET,
                windows: int = DEFAULT_WINDOWS, mask_rate: float = 0.0, seed: int = 0,
                threshold: float = DEFAULT_SLASH_THRESHOLD) -> AttentionAnalysis:
    """Loads a run's newest checkpoint and measures its attention on `windows` windows of `inputs`."""
    if inputs not in INPUTS:
        raise ConfigError(f"--inputs '{inputs}' is not one of: {', '.join(INPUTS)}")
    if max_offset < 1:
        raise ConfigError(f"--max-offset must be >= 1, got {max_offset}")
    if windows < 1:
        raise ConfigError(f"--windows must be >= 1, got {windows}")
    if not 0.0 <= mask_rate < 1.0:
        raise ConfigError(f"--mask-rate must be in [0, 1), got {mask_rate}")
    run_dir = Path(run_dir)
    cfg, params, step = load_params(run_dir)
    _analysis_inputs(cfg)  # fails before the data is read
    tokens = input_windows(cfg, inputs, windows, seed)
    model_in, mask_kind, mask_rate, positions, targets = analysis_view(tokens, cfg, mask_rate, seed)
    cap = capture_attention(params, cfg.model, model_in, positions, mask_kind, targets)
    result = analyze_capture(cap, max_offset, threshold)
    result.table = {"run": run_dir.resolve().name, "run_dir": str(run_dir), "objective": cfg.objective.name,
                    "step": step, "mask_kind": mask_kind, "inputs": inputs, "windows": int(tokens.shape[0]),
                    "seq_len": int(tokens.shape[1]), "mask_rate": mask_rate, "seed": seed, **result.table}
    return result


def summarize_run(run_dir: str | Path, threshold: float = DEFAULT_SLASH_THRESHOLD, inputs: str = "corpus",
                  **kwargs) -> dict:
    """The per-run summary (for a sweep report line): slash-dominant fraction at `threshold`, etc."""
    return analyze_run(run_dir, inputs=inputs, threshold=threshold, **kwargs).table["summary"]


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
