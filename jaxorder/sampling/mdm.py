"""Samplers for masked-diffusion (mdm) runs, each one jitted loop over steps, batched.

Input: tokens [B, L] where MASK marks the positions to generate; every other token is fixed and
never changes (prompts, infilling templates). The conditionals p(. | x_t) are
``jaxorder.objectives.mdm.masked_log_probs`` (SUBS: MASK has probability 0, so it is never
sampled); the fused path computes the same conditionals inside ``pallas_kernels``.

Samplers (``SamplerConfig.name``):
- ``ancestral`` (MDLM, log-linear schedule): going from time t to s < t every masked position
  is revealed with probability (t - s) / t and its token drawn from p(. | x_t); revealed tokens
  carry over (SUBS). On the uniform time grid t_j = (S - j) / S of a block with S steps that
  probability is 1 / (steps left), so the last step reveals everything. A step that reveals
  nothing in any row leaves x_t unchanged, so the previous forward pass is reused (MDLM's
  cache; batch-wide, so it mostly helps small batches): ``nfe`` counts the passes actually run.
- ``confidence`` / ``margin`` / ``entropy`` (LLaDA, Dream): draw a token at every masked
  position (Gumbel-max at temperature T, argmax at T = 0), score each position by the rule —
  p(sampled token), p1 - p2, or minus the entropy, all under the model's distribution at
  temperature 1 — and commit the k best masked positions, k = ceil(masked left / steps left).
- ``threshold`` (Fast-dLLM): commit every masked position whose confidence >= ``threshold``, and
  at least the k = ceil(masked left / steps left) most confident ones (so at least one per step
  and never more than ``steps`` steps); a batch stops as soon as all rows are complete.
- ``block_length`` > 0: semi-autoregressive blocks. Positions from the first masked column on
  are cut into blocks of ``block_length``; blocks are filled left to right, each with its share
  of ``steps`` (split as evenly as possible, earlier blocks get the remainder), attending to the
  whole sequence (later blocks still masked). A block whose masks are all filled early ends early.

The per-step commitment on given log-probs (``commit_step``: draw, rule, commit; ``advance``: the
state update) is shared with the block-diffusion sampler ``jaxorder.sampling.bd3``.

Randomness: step j uses ``fold_in(key, j)``; the Gumbel noise is ``gumbel_noise(step_key,
[B, L, V], noise)`` (``"high"``: float64-accurate tails; ``"float32"``: the naive 24-bit one).
Same key -> same output; temperature 0 with a k-best rule uses no randomness at all.

``fused=True`` (rules confidence, margin, entropy, threshold) replaces the per-step logits +
sampling + scoring by ``pallas_kernels.mdm_sample_step`` on the model's final hidden states and
``head`` matrix (on CPU: its plain-JAX reference, or Pallas interpret mode with
``interpret=True``). It draws the identical noise for the same step key, so it gives the same
tokens as the plain path.

``score_path``: the sampler's loop with the commitment forced (one given position per step) and
the tokens teacher-forced; it returns log p of the path, which for an order sigma is the exact
chain rule sum_j log p(x_sigma_j | x_sigma_<j) of ``jaxorder.evaluation.fixed_orders.chain_rule_nll``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.objectives.common import positions_like, special_ids
from jaxorder.sampling.noise import PRECISIONS, gumbel_noise

SAMPLERS = ("ancestral", "confidence", "margin", "entropy", "threshold")
_RULE = {"confidence": "confidence", "margin": "margin", "entropy": "entropy", "threshold": "confidence"}


@dataclass(frozen=True)
class SamplerConfig:
    """A masked-diffusion sampler (hashable: it is a static argument of the compiled loop)."""

    name: str = "confidence"  # ancestral | confidence | margin | entropy | threshold
    steps: int = 64  # denoising steps (forward passes at most) over the whole sequence
    temperature: float = 1.0  # 0 = argmax
    threshold: float = 0.9  # threshold sampler: commit every masked position with confidence >= this
    block_length: int = 0  # semi-autoregressive blocks of this many positions (0 = one block)
    noise: str = "high"  # Gumbel noise: high (float64-accurate tails) | float32 (naive 24-bit)
    fused: bool = False  # use pallas_kernels.mdm_sample_step for the commitment step
    interpret: bool | None = None  # fused path: None = by backend (CPU: reference), True = Pallas interpret

    def validate(self) -> None:
        if self.name not in SAMPLERS:
            raise ConfigError(f"unknown mdm sampler '{self.name}'; use one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if not self.temperature >= 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.block_length < 0:
            raise ConfigError(f"--block-length must be >= 0 (0 = no blocks), got {self.block_length}")
        if self.noise not in PRECISIONS:
            raise ConfigError(f"noise must be one of {', '.join(PRECISIONS)}, got '{self.noise}'")
        if self.fused and self.name == "ancestral":
            raise ConfigError("the fused step commits by a rule (confidence, margin, entropy, threshold); "
                              "the ancestral sampler has no fused path")


def block_schedule(length: int, steps: int, block_length: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(block id of each position [L] (-1 before ``start``), step budget of each block [nb])."""
    span = length - start
    bl = block_length if 0 < block_length < span else max(span, 1)
    nb = -(-span // bl) if span > 0 else 1
    if steps < nb:
        raise ConfigError(f"{steps} steps cannot fill {nb} blocks of {bl} positions; use --steps >= {nb} "
                          f"or a longer --block-length")
    block_L = np.where(np.arange(length) >= start, (np.arange(length) - start) // bl, -1).astype(np.int32)
    return block_L, split_steps(steps, nb)


def split_steps(steps: int, num_blocks: int) -> np.ndarray:
    """Step budget of each of ``num_blocks`` blocks [nb]: ``steps`` split as evenly as possible, the
    earlier blocks get the remainder (needs steps >= num_blocks for every block to get one)."""
    budget = np.full(num_blocks, steps // num_blocks, np.int32)
    budget[: steps % num_blocks] += 1
    return budget


def final_hidden(params, x_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Final hidden states [B, L, d] (after the final norm) of the bidirectional model; the
    logits are hidden @ params['head'] (the head matmul is dead code here and removed by XLA)."""
    _, state = model.Transformer(cfg.model).apply(
        {"params": params}, x_BL, positions_like(x_BL), "bidirectional",
        capture_intermediates=lambda mdl, method: mdl.name == "final_norm", mutable=["intermediates"])
    return state["intermediates"]["final_norm"]["__call__"][0]


def _draw(logp_BLV: jnp.ndarray, key: jax.Array, sc: SamplerConfig) -> jnp.ndarray:
    if sc.temperature == 0:
        return jnp.argmax(logp_BLV, axis=-1).astype(jnp.int32)
    g_BLV = gumbel_noise(key, logp_BLV.shape, sc.noise)
    return jnp.argmax(logp_BLV * (1.0 / sc.temperature) + g_BLV, axis=-1).astype(jnp.int32)


def _rule_score(logp_BLV: jnp.ndarray, lp_tok_BL: jnp.ndarray, rule: str) -> jnp.ndarray:
    if rule == "confidence":
        return jnp.exp(lp_tok_BL)
    if rule == "margin":
        top2 = lax.top_k(logp_BLV, 2)[0]
        return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
    p_BLV = jnp.exp(logp_BLV)
    return jnp.sum(jnp.where(p_BLV > 0, p_BLV * logp_BLV, 0.0), axis=-1)  # -entropy


def tokens_per_step(eligible_BL: jnp.ndarray, steps_left) -> jnp.ndarray:
    """k [B] = ceil(eligible positions left / steps left): what a k-best rule commits this step."""
    return (eligible_BL.sum(axis=1) + steps_left - 1) // steps_left


def commit_step(logp_BLV: jnp.ndarray, eligible_BL: jnp.ndarray, step_key: jax.Array, steps_left,
                sc: SamplerConfig, threshold) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One unfused sampler step on given log-probs [B, L, V] (SUBS applied): draws a token at every
    position and picks the positions to commit among ``eligible_BL`` by the rule of ``sc.name``
    (module docstring), ``steps_left`` counting this step. Returns (tokens [B, L] int32, commit
    [B, L] bool, log p of the tokens [B, L]); the noise is drawn for the shape of ``logp_BLV``."""
    from pallas_kernels.sampling import commit as commit_top_k

    tok_BL = _draw(logp_BLV, step_key, sc)
    lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
    if sc.name == "ancestral":
        u_BL = jax.random.uniform(jax.random.fold_in(step_key, 1), eligible_BL.shape)
        return tok_BL, eligible_BL & (u_BL * steps_left < 1.0), lp_tok_BL  # (t - s) / t = 1 / steps left
    commit_BL = commit_top_k(_rule_score(logp_BLV, lp_tok_BL, _RULE[sc.name]), eligible_BL,
                             k=tokens_per_step(eligible_BL, steps_left))
    if sc.name == "threshold":
        commit_BL = commit_BL | (eligible_BL & (jnp.exp(lp_tok_BL) >= threshold))
    return tok_BL, commit_BL, lp_tok_BL


def advance(st: dict, tok_BL: jnp.ndarray, commit_BL: jnp.ndarray, lp_tok_BL: jnp.ndarray, nfe) -> dict:
    """The loop state after a step: committed tokens written into ``x``, unmasked in ``masked``,
    their log p added to ``logprob``, the commit count recorded in ``commits[step]``; step and nfe
    advanced."""
    i = st["step"]
    return dict(st, x=jnp.where(commit_BL, tok_BL, st["x"]), masked=st["masked"] & ~commit_BL,
                logprob=st["logprob"] + jnp.sum(jnp.where(commit_BL, lp_tok_BL, 0.0), axis=1),
                commits=st["commits"].at[i].set(commit_BL.sum(axis=1).astype(jnp.int32)),
                step=i + 1, nfe=st["nfe"] + nfe)


def _build(cfg: Config, sc: SamplerConfig, block_start: int, forced: bool):
    """The sampling loop for static (cfg, sampler, block start); see the module docstring."""
    from pallas_kernels import mdm_sample_step

    mask_id = special_ids(cfg.model).mask
    rule = _RULE.get(sc.name)

    def run(params, tokens_BL, key, threshold, forced_order_BL=None, forced_tokens_BL=None):
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, block_start)
        block_L, budget = jnp.asarray(block_np), jnp.asarray(budget_np)
        pos_L = jnp.arange(L, dtype=jnp.int32)
        st = dict(x=tokens_BL.astype(jnp.int32), masked=tokens_BL == mask_id, logprob=jnp.zeros((B,), jnp.float32),
                  step=jnp.zeros((), jnp.int32), nfe=jnp.zeros((), jnp.int32),
                  commits=jnp.zeros((sc.steps, B), jnp.int32))
        if sc.name == "ancestral" and not forced:
            st["logp"] = jnp.zeros((B, L, cfg.model.vocab_size), jnp.float32)
            st["dirty"] = jnp.ones((), bool)

        def one_step(st, eligible_BL, steps_left):
            i, x_BL = st["step"], st["x"]
            k_step = jax.random.fold_in(key, i)
            if forced:
                logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
                tok_BL = forced_tokens_BL.astype(jnp.int32)
                commit_BL = eligible_BL & (pos_L[None, :] == forced_order_BL[:, i][:, None])
                lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
                nfe = 1
            elif sc.name == "ancestral":
                logp_BLV = lax.cond(st["dirty"], lambda: mdm_objective.masked_log_probs(params, x_BL, cfg),
                                    lambda: st["logp"])
                nfe = st["dirty"].astype(jnp.int32)
                tok_BL, commit_BL, lp_tok_BL = commit_step(logp_BLV, eligible_BL, k_step, steps_left, sc, threshold)
                st = dict(st, logp=logp_BLV, dirty=commit_BL.any())
            elif sc.fused:
                hidden_BLd = final_hidden(params, x_BL, cfg)
                res = mdm_sample_step(hidden_BLd, params["head"], x_BL, eligible_BL, k_step,
                                      temperature=float(sc.temperature), rule=rule,
                                      k=tokens_per_step(eligible_BL, steps_left),
                                      forbidden_ids=(mask_id,), interpret=sc.interpret)
                tok_BL, commit_BL = res["sampled"].astype(jnp.int32), res["committed"]
                lp_tok_BL = jnp.log(res["confidence"])
                if sc.name == "threshold":
                    commit_BL = commit_BL | (eligible_BL & (res["confidence"] >= threshold))
                nfe = 1
            else:
                logp_BLV = mdm_objective.masked_log_probs(params, x_BL, cfg)
                tok_BL, commit_BL, lp_tok_BL = commit_step(logp_BLV, eligible_BL, k_step, steps_left, sc, threshold)
                nfe = 1
            return advance(st, tok_BL, commit_BL, lp_tok_BL, nfe)

        def block_body(b, st):
            in_block_L = block_L == b

            def cond(carry):
                j, s = carry
                return (j < budget[b]) & jnp.any(s["masked"] & in_block_L[None, :])

            def body(carry):
                j, s = carry
                return j + 1, one_step(s, s["masked"] & in_block_L[None, :], budget[b] - j)

            return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), st))[1]

        st = lax.fori_loop(0, len(budget_np), block_body, st)
        return dict(tokens=st["x"], logprob=st["logprob"], nfe=st["nfe"], steps=st["step"],
                    commits=st["commits"], complete=~st["masked"].any(axis=1))

    return run


@functools.lru_cache(maxsize=32)
def _compiled(cfg: Config, sc: SamplerConfig, block_start: int, forced: bool):
    return jax.jit(_build(cfg, sc, block_start, forced))


def _prepare(cfg: Config, tokens_BL, sampler: SamplerConfig):
    sampler.validate()
    if cfg.objective.name != "mdm":
        raise ConfigError(f"the masked-diffusion samplers need an mdm run, not '{cfg.objective.name}'")
    tokens = np.asarray(tokens_BL, dtype=np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}")
    if tokens.shape[1] > cfg.model.max_len:
        raise ConfigError(f"length {tokens.shape[1]} exceeds model.max_len={cfg.model.max_len}")
    masked = tokens == special_ids(cfg.model).mask
    start = int(np.argmax(masked.any(axis=0))) if (sampler.block_length and masked.any()) else 0
    static = dataclasses.replace(sampler, threshold=0.0)  # the threshold is traced: no recompilation
    return _compiled(cfg, static, start, False), jnp.asarray(tokens), jnp.float32(sampler.threshold)


def compile_sample(params, cfg: Config, tokens_BL, key: jax.Array, sampler: SamplerConfig):
    """Ahead-of-time compiled ``sample`` for these inputs: returns ``run() -> dict`` (benchmarks)."""
    fn, tokens, threshold = _prepare(cfg, tokens_BL, sampler)
    compiled = fn.lower(params, tokens, key, threshold).compile()
    return lambda: compiled(params, tokens, key, threshold)


def sample(params, cfg: Config, tokens_BL, key: jax.Array, sampler: SamplerConfig) -> dict:
    """Fills every MASK of ``tokens_BL`` [B, L]; other tokens are kept.

    Returns a dict: ``tokens`` [B, L] int32 (no MASK left), ``logprob`` [B] (sum of
    log p(token | x_t) of the committed tokens, under the model at temperature 1), ``nfe``
    (forward passes run), ``steps`` (steps taken; <= sampler.steps), ``commits`` [steps, B]
    (positions committed per step and row; rows past ``steps`` are 0), ``complete`` [B] bool.
    """
    fn, tokens, threshold = _prepare(cfg, tokens_BL, sampler)
    return fn(params, tokens, key, threshold)


def score_path(params, cfg: Config, tokens_BL, order_BL) -> jnp.ndarray:
    """log p [B] of revealing ``tokens_BL`` one position per step in ``order_BL`` (position revealed
    at each step, [B, L]) starting from all-MASK, run through the sampler loop with the commitment
    forced and the tokens teacher-forced. Equals -``fixed_orders.chain_rule_nll`` for that order."""
    tokens = jnp.asarray(tokens_BL, jnp.int32)
    B, L = tokens.shape
    sc = SamplerConfig(name="confidence", steps=L, temperature=0.0)
    start = jnp.full((B, L), special_ids(cfg.model).mask, jnp.int32)
    out = _compiled(cfg, sc, 0, True)(params, start, jax.random.key(0), jnp.float32(1.0),
                                      jnp.asarray(order_BL, jnp.int32), tokens)
    return out["logprob"]
