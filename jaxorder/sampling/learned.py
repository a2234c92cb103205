"""The ``learned`` sampler of masked-diffusion (mdm) runs: commit where a trained commit filter
(``jaxorder.sampling.commit_filter``, after Learn2PD / TraceLock) says a position's current
prediction is its final token, and stop a row once the filter says all it has left is end of text.

Each step is one bidirectional pass (final hidden states and log-probs together):

1. draw a token at every position as the mdm rules do (Gumbel-max at temperature T, argmax at
   T = 0, noise from ``fold_in(key, step)``, or ``key`` itself at every step with ``fixed_noise``), so with
   the same key and options it draws what ``confidence`` draws;
2. the filter's probability p at every position from that step's features;
3. commit the eligible positions (still masked, in the current block) with p >= ``filter_threshold``,
   and at least the one with the highest p (ties: the lower position), or with ``filter_floor`` =
   "confidence" the one the confidence rule would commit (the highest probability of its drawn
   token), so the filter only adds commits to that rule; a block's last budgeted step commits
   everything the block has left: ``steps`` is an upper bound, as for ``threshold``;
4. end of text: when every position a row still has masked after 3 (in any block) has an EOS or PAD
   prediction with p >= ``filter_threshold``, they are all committed with those predictions in the
   same step, and the row is complete. ``stop_filled`` [B] counts those positions and ``eos_stopped``
   [B] marks the rows (``eos_filled`` [B] counts them and the fill after a committed EOS,
   ``jaxorder.sampling.eos``, as for every masked sampler). It matters with ``block_length``, where
   it skips the blocks of padding after a short answer (in one block, positions the filter accepts
   are committed by 3 anyway).
   ``eos_stop`` False (``--no-eos-stop``) turns this step off, the ablation of the stop; ``ignore_eos``
   does not (it turns off the fill after the first committed EOS, ``jaxorder.sampling.eos``).

Blocks, prompts and templates as in ``jaxorder.sampling.mdm`` (blocks from the first masked column,
``steps`` split over them); fixed tokens never change. The filter is read from ``commit_filter``, a
path that `jaxorder sample` defaults to the run directory's commit_filter.yaml (``run_files``); its
arrays are traced, so another filter of the same shapes or another threshold does not recompile.
Output: the mdm outputs (``commits``, ``complete``, ``committed_at``, ``rows``, ``early`` = 0)
plus ``stop_filled`` and ``eos_stopped``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder.config import Config, ConfigError
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import commit_filter
from jaxorder.sampling.base import Prepared, Sampler, SamplerOptions, register
from jaxorder.sampling.commit_filter import (
    end_ids,
    feature_matrix,
    filter_logits,
    hidden_and_log_probs,
    scalar_features,
)
from jaxorder.sampling.eos import eos_id
from jaxorder.sampling.mdm_steps import (
    advance,
    block_schedule,
    draw,
    entropy,
    initial_state,
    over_blocks,
    parallel_floor,
    result,
    step_key,
)
from pallas_kernels.sampling import commit as commit_top_k

OPTIONS = ("steps", "temperature", "block_length", "noise", "fixed_noise", "ignore_eos", "commit_filter",
           "filter_threshold", "filter_floor", "eos_stop")


@dataclass(frozen=True)
class LearnedLoop:
    """What the compiled loop is specialized on (the filter's arrays and threshold are traced)."""

    options: SamplerOptions
    block_start: int
    features: tuple[str, ...]


def commit_rule(prob_BL: jnp.ndarray, tok_BL: jnp.ndarray, masked_BL: jnp.ndarray, eligible_BL: jnp.ndarray,
                steps_left, threshold, ends: tuple[int, ...], stop: bool = True,
                floor_score_BL: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(positions committed by steps 3 and 4 of the module docstring [B, L], those of them filled by
    the end-of-text stop [B, L]) given the filter's probabilities; ``stop`` False skips step 4. The
    floor commits go to the highest ``floor_score_BL`` (default: the filter's probabilities)."""
    yes_BL = prob_BL >= threshold
    floor_B = parallel_floor(eligible_BL, steps_left)  # 1, or the whole block on its last step
    floor_BL = prob_BL if floor_score_BL is None else floor_score_BL
    commit_BL = commit_top_k(floor_BL, eligible_BL, k=floor_B) | (eligible_BL & yes_BL)
    left_BL = masked_BL & ~commit_BL
    end_BL = jnp.isin(tok_BL, jnp.asarray(ends, tok_BL.dtype)) & yes_BL
    stop_B = jnp.any(left_BL, axis=1) & jnp.all(end_BL | ~left_BL, axis=1) & stop
    filled_BL = left_BL & stop_B[:, None]
    return commit_BL | filled_BL, filled_BL


def filter_probs(arrays, features: tuple[str, ...], scalars_BLS: jnp.ndarray,
                 hidden_BLd: jnp.ndarray) -> jnp.ndarray:
    """The filter's probability [B, L] at every position."""
    return jax.nn.sigmoid(filter_logits(arrays, feature_matrix(features, scalars_BLS, hidden_BLd)))


def build(cfg: Config, loop: LearnedLoop):
    """run(params, key, tokens_BL, filter arrays, threshold) -> the module docstring's outputs."""
    mask_id, ends, sc = special_ids(cfg.model).mask, end_ids(cfg), loop.options

    def run(params, key, tokens_BL, arrays, threshold):
        B, L = tokens_BL.shape
        block_np, budget_np = block_schedule(L, sc.steps, sc.block_length, loop.block_start)
        block_L, budget = jnp.asarray(block_np), jnp.asarray(budget_np)
        st = dict(initial_state(tokens_BL, mask_id, sc.steps), stop_filled=jnp.zeros((B,), jnp.int32))
        generated_BL = st["masked"]

        def one_step(st, in_block_L, j, block_budget):
            masked_BL = st["masked"]
            eligible_BL = masked_BL & in_block_L[None, :]
            hidden_BLd, logp_BLV = hidden_and_log_probs(params, st["x"], cfg)
            tok_BL = draw(logp_BLV, step_key(key, st["step"], sc), sc)
            lp_tok_BL = jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0]
            scalars_BLS = scalar_features(logp_BLV, tok_BL, masked_BL, generated_BL, in_block_L, j,
                                          block_budget, ends)
            prob_BL = filter_probs(arrays, loop.features, scalars_BLS, hidden_BLd)
            floor_BL = lp_tok_BL if sc.filter_floor == "confidence" else None
            commit_BL, filled_BL = commit_rule(prob_BL, tok_BL, masked_BL, eligible_BL, block_budget - j,
                                               threshold, ends, sc.eos_stop, floor_BL)
            st = advance(st, tok_BL, commit_BL, lp_tok_BL, 1, entropy(logp_BLV))
            n_B = filled_BL.sum(axis=1).astype(jnp.int32)
            return dict(st, rows=st["rows"] + L, eos_filled=st["eos_filled"] + n_B,
                        stop_filled=st["stop_filled"] + n_B)

        st = over_blocks(st, block_L, budget, one_step, eos_id(cfg, sc))
        return dict(result(st), stop_filled=st["stop_filled"], eos_stopped=st["stop_filled"] > 0)

    return run


def prepare(cfg: Config, tokens_BL: np.ndarray, options: SamplerOptions) -> Prepared:
    if not options.commit_filter:
        raise ConfigError(f"the learned sampler needs a commit filter; {commit_filter.TRAIN_HINT}")
    filt = commit_filter.load(options.commit_filter)
    if filt.hidden_size and filt.hidden_size != cfg.model.d_model:
        raise ConfigError(f"the commit filter {options.commit_filter} reads hidden states of size "
                          f"{filt.hidden_size}, this run has d_model={cfg.model.d_model}; train one on this "
                          f"run's traces with `jaxorder train-filter RUN_DIR TRACES`")
    masked = tokens_BL == special_ids(cfg.model).mask
    start = int(np.argmax(masked.any(axis=0))) if masked.any() else 0  # as mdm: a prompt is no block
    static = dataclasses.replace(options, commit_filter="", filter_threshold=SamplerOptions.filter_threshold)
    arrays = {k: jnp.asarray(v) for k, v in filt.arrays.items()}
    return Prepared(LearnedLoop(static, start, filt.features),
                    (jnp.asarray(tokens_BL), arrays, jnp.float32(options.filter_threshold)))


register(Sampler(name="learned", family="masked", options=OPTIONS, prepare=prepare, build=build,
                 description="commit where a trained commit filter says the prediction is final; stop "
                             "at predicted end of text",
                 run_files=(("commit_filter", commit_filter.FILTER_FILE),)))
