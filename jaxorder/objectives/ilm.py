"""Insertion language model (ILM; Patel et al. 2025, "Insertion Language Models: Sequence Generation
with Arbitrary-Position Insertions", arXiv:2505.05755).

Generation grows a sequence y by inserting one token at a time into one of its m + 1 gaps (gap g
lies between y_{g-1} and y_g; gap 0 before y_0, gap m after y_{m-1}) until the model stops.

Training (a denoising objective, as in the paper). Per window x of n tokens draw a drop count
k ~ U{0..n} and a uniformly random subset of k positions (the paper's drop distribution: every
subset size equally likely), drop them, and keep the m = n - k others in order:
    slot j:      0     1     ...  m       m+1 ... n
    input:       BOS   y_0   ...  y_{m-1} PAD ... PAD
    position:    0     1     ...  m       (RoPE: indices in the shortened sequence; BOS at 0)
Bidirectional attention over slots 0..m only (`key_valid`: no query sees a PAD key, so the number
of pads, i.e. of dropped tokens, does not leak). Slot g answers for gap g:
  - length head over 0..C-1, C = objective.ilm_max_gap + 1: the number c_g of tokens dropped in
    gap g, clipped to ilm_max_gap (a count above it is trained as ilm_max_gap, "that many or more";
    the sampler needs only P(c_g = 0), which the clip leaves exact);
  - token head (the model's vocabulary head; PAD, MASK and BOS excluded), scored only where
    c_g > 0: the FIRST dropped token of the gap, x at (position of y_{g-1}) + 1. The rest of the gap
    is left to later insertions, which go to the gap's left end as well.
    loss(x) = [ sum_{g <= m} CE(len_g, min(c_g, max_gap)) + sum_{g: c_g > 0} CE(tok_g, first_g) ] / n
(batch mean). Departures from the paper: the paper normalizes one softmax jointly over all
(gap, token) pairs with the target spread uniformly over every dropped token (the gap's multiset),
plus a separate stop (or total-length) classifier; here the gap is chosen by a per-gap length head
and the token target is the gap's first token, so generation inside a gap runs left to right and
the left-to-right insertion path below is a natural one for the model.

The generative process the sampler runs and `order_nll` scores (one step, state y with m tokens,
P_g = softmax(len_g), q_g = softmax(tok_g) over the allowed tokens):
    s(y)       = prod_{g=0..m} P_g(0)                       stop probability
    w_g        = 1 - P_g(0)                                 gap weight (some token is missing)
    p(g, v | y) = (1 - s(y)) * w_g / sum_g' w_g' * q_g(v)   insert v at gap g's left end
These sum to 1 with s(y). For an order sigma (the position of x each step inserts),
    -log p(x, sigma) = -sum_{j<n} log p(g_j, x_{sigma_j} | y_j) - log s(x),
g_j the gap of x_{sigma_j} among the positions sigma_<j. Since p(x) sums p over every insertion path
(and paths repeat sequences), -log p(x, sigma) >= -log p(x): an UPPER BOUND on the NLL of x under
the insertion model, for any sigma. `nll` (the yardstick) is the bound of the l2r order
(sigma = identity: every insertion appends at the end of the prefix); n + 1 forward passes.
The training loss itself is a proxy, not a likelihood.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.objectives.base import Objective, Option, OrderScoring, register
from jaxorder.objectives.common import special_ids


def length_classes(cfg: Config) -> int:
    return cfg.objective.ilm_max_gap + 1


def compact(tokens_BL: jnp.ndarray, keep_BL: jnp.ndarray, pad: int,
            bos: int) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The kept tokens left-aligned after BOS: (input [B, L+1], valid slots [B, L+1], position of the
    kept token of each slot j >= 1 in the window [B, L+1]; slot 0 (BOS) gets -1)."""
    B, L = tokens_BL.shape
    src_BL = jnp.argsort(~keep_BL, axis=1, stable=True).astype(jnp.int32)  # kept positions first, in order
    m_B1 = keep_BL.sum(axis=1, keepdims=True)
    slot_L = jnp.arange(L)
    kept_BL = jnp.where(slot_L < m_B1, jnp.take_along_axis(tokens_BL, src_BL, axis=1), pad)
    bos_B1 = jnp.full((B, 1), bos, tokens_BL.dtype)
    inputs_BS = jnp.concatenate([bos_B1, kept_BL.astype(tokens_BL.dtype)], axis=1)
    valid_BS = jnp.concatenate([jnp.ones((B, 1), bool), slot_L < m_B1], axis=1)
    src_BS = jnp.concatenate([jnp.full((B, 1), -1, jnp.int32), jnp.where(slot_L < m_B1, src_BL, L)], axis=1)
    return inputs_BS, valid_BS, src_BS


def gap_targets(tokens_BL: jnp.ndarray, keep_BL: jnp.ndarray, max_gap: int,
                pad: int) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per gap g = 0..L (slot g of `compact`): (dropped count c_g [B, L+1] unclipped, its clipped
    length class [B, L+1], first dropped token [B, L+1], PAD where c_g = 0)."""
    B, L = tokens_BL.shape
    # a dropped position's gap = number of kept tokens before it
    gap_BL = jnp.cumsum(keep_BL, axis=1) - keep_BL
    dropped_BL = ~keep_BL
    count_BS = jax.vmap(lambda g, d: jnp.zeros((L + 1,), jnp.int32).at[g].add(d))(gap_BL, dropped_BL.astype(
        jnp.int32))
    _, _, src_BS = compact(tokens_BL, keep_BL, pad, pad)
    first_BS = jnp.clip(src_BS + 1, 0, L - 1)  # the position right after the gap's left neighbour
    first_tok_BS = jnp.where(count_BS > 0, jnp.take_along_axis(tokens_BL, first_BS, axis=1), pad)
    return count_BS, jnp.minimum(count_BS, max_gap), first_tok_BS


def insertion_log_probs(params, inputs_BS: jnp.ndarray, valid_BS: jnp.ndarray,
                        cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(log q_g(v) [B, S, V] with PAD/MASK/BOS at -inf, log P_g(c) [B, S, C]) of a padded state."""
    ids = special_ids(cfg.model)
    positions_BS = jnp.broadcast_to(jnp.arange(inputs_BS.shape[1], dtype=jnp.int32), inputs_BS.shape)
    logits_BSV, length_BSC = model.apply_insertion(params, cfg.model, inputs_BS, positions_BS, valid_BS)
    banned_V = jnp.zeros((logits_BSV.shape[-1],), bool).at[jnp.array([ids.pad, ids.mask, ids.bos])].set(True)
    logq_BSV = jax.nn.log_softmax(jnp.where(banned_V, -jnp.inf, logits_BSV), axis=-1)
    return logq_BSV, jax.nn.log_softmax(length_BSC, axis=-1)


def drop_mask(rng: jax.Array, batch_size: int, n: int) -> jnp.ndarray:
    """keep [B, n] bool: k ~ U{0..n} dropped positions per row, a uniform subset of that size."""
    k_rng, perm_rng = jax.random.split(rng)
    k_B1 = jax.random.randint(k_rng, (batch_size, 1), 0, n + 1)
    rank_Bn = jnp.argsort(jnp.argsort(jax.random.uniform(perm_rng, (batch_size, n)), axis=1), axis=1)
    return rank_Bn >= k_B1


def denoising_loss(params, tokens_BL: jnp.ndarray, keep_BL: jnp.ndarray,
                   cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(length NLL summed over the valid gaps [B], token NLL summed over the non-empty gaps [B])."""
    ids = special_ids(cfg.model)
    inputs_BS, valid_BS, _ = compact(tokens_BL, keep_BL, ids.pad, ids.bos)
    count_BS, cls_BS, first_BS = gap_targets(tokens_BL, keep_BL, cfg.objective.ilm_max_gap, ids.pad)
    logq_BSV, logP_BSC = insertion_log_probs(params, inputs_BS, valid_BS, cfg)
    len_nll_BS = -jnp.take_along_axis(logP_BSC, cls_BS[..., None], axis=-1)[..., 0]
    tok_nll_BS = -jnp.take_along_axis(logq_BSV, first_BS[..., None], axis=-1)[..., 0]
    return (jnp.where(valid_BS, len_nll_BS, 0.0).sum(axis=1),
            jnp.where(count_BS > 0, tok_nll_BS, 0.0).sum(axis=1))


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    tokens_BL = batch["tokens"]
    B, n = tokens_BL.shape
    keep_BL = drop_mask(rng, B, n)
    len_B, tok_B = denoising_loss(params, tokens_BL, keep_BL, cfg)
    value = (len_B + tok_B).mean() / n
    return value, {"loss": value, "nll_per_token": value, "length_loss": len_B.mean() / n,
                   "token_loss": tok_B.mean() / n, "drop_rate": 1.0 - keep_BL.mean()}


def step_log_probs(logP_BSC: jnp.ndarray,
                   gaps_BS: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The process above over the gaps `gaps_BS` (bool): (log s(y) [B], log(1 - s(y)) [B],
    log w_g / sum w [B, S], -inf outside the gaps)."""
    log_s_B = jnp.where(gaps_BS, logP_BSC[..., 0], 0.0).sum(axis=1)
    log_w_BS = jnp.where(gaps_BS, jax.nn.logsumexp(logP_BSC[..., 1:], axis=-1), -jnp.inf)
    # (the floor keeps a row whose every weight is 0 at -inf instead of NaN)
    log_gap_BS = log_w_BS - jnp.maximum(jax.nn.logsumexp(log_w_BS, axis=1, keepdims=True), -1e30)
    log_go_B = jnp.log(-jnp.expm1(jnp.minimum(log_s_B, -1e-30)))  # log(1 - s), finite for s < 1
    return log_s_B, log_go_B, log_gap_BS


def order_nll(params, tokens_BL: jnp.ndarray, orders_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """-log p(x, sigma) [B] in nats: insert x_{sigma_0}, x_{sigma_1}, ... then stop (n + 1 passes)."""
    ids = special_ids(cfg.model)
    B, n = tokens_BL.shape
    rows_B = jnp.arange(B)
    rank_BL = jnp.argsort(orders_BL, axis=1)  # the step that inserts each position

    def step(nll_B, j):
        present_BL = rank_BL < j
        inputs_BS, valid_BS, _ = compact(tokens_BL, present_BL, ids.pad, ids.bos)
        logq_BSV, logP_BSC = insertion_log_probs(params, inputs_BS, valid_BS, cfg)
        log_s_B, log_go_B, log_gap_BS = step_log_probs(logP_BSC, valid_BS)
        pos_B = orders_BL[:, jnp.minimum(j, n - 1)]
        gap_B = jnp.sum(present_BL & (jnp.arange(n) < pos_B[:, None]), axis=1)
        insert_B = log_go_B + log_gap_BS[rows_B, gap_B] + logq_BSV[rows_B, gap_B, tokens_BL[rows_B, pos_B]]
        return nll_B - jnp.where(j < n, insert_B, log_s_B), None

    nll_B, _ = jax.lax.scan(step, jnp.zeros((B,), jnp.float32), jnp.arange(n + 1))
    return nll_B


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """Upper bound on the NLL [B] in nats: the insertion NLL of the left-to-right path plus the stop."""
    del rng
    tokens_BL = batch["tokens"]
    l2r_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1], dtype=jnp.int32), tokens_BL.shape)
    return order_nll(params, tokens_BL, l2r_BL, cfg)


OPTIONS = (Option("ilm_max_gap", 32, "ilm: the length head's largest count; more dropped tokens in a gap "
                                     "are trained as this many"),)


def analysis_inputs(tokens_NL: np.ndarray, cfg: Config, mask_rate: float, seed: int) -> tuple:
    """The state with nothing dropped, [BOS, x] (n + 1 slots, bidirectional): a dropped state is padded
    per row, which the attention capture does not take, so `mask_rate` is ignored (rate 0)."""
    del mask_rate, seed
    bos_N1 = np.full((tokens_NL.shape[0], 1), special_ids(cfg.model).bos, np.int32)
    return np.concatenate([bos_N1, tokens_NL], axis=1).astype(np.int32), "bidirectional", 0.0


def validate_config(cfg: Config) -> None:
    if cfg.objective.ilm_max_gap < 1:
        raise ConfigError(f"objective.ilm_max_gap must be >= 1, got {cfg.objective.ilm_max_gap}")
    if cfg.model.max_len < cfg.data.seq_len + 1:
        raise ConfigError(f"ilm puts BOS before the window: model.max_len must be >= data.seq_len + 1 = "
                          f"{cfg.data.seq_len + 1}, got {cfg.model.max_len}; raise model.max_len")


OBJECTIVE = register(Objective(
    name="ilm", loss=loss, nll=nll, exact=False, yardstick="upper bound (l2r insertion path)",
    sampling="insertion", default_sampler="insert", order_scoring=OrderScoring(order_nll=order_nll),
    options=OPTIONS, validate_config=validate_config, length_classes=length_classes,
    analysis_inputs=analysis_inputs))
