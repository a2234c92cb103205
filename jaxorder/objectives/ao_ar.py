"""Any-order autoregression (sigma-GPT, Pannatier et al. 2024; AO-GPT, Xue et al. 2025).

For an order sigma (a permutation of 0..n-1) the window is read as x_sigma_0, x_sigma_1, ...,
and the network predicts each token from the ones before it in that order:

    -log p(x | sigma) = sum_j -log p(x_sigma_j | x_sigma_<j; positions sigma_<=j).

Layout of the single pass (length n, causal mask over the *permuted* sequence):
    slot j:            0      1         2        ...  n-1
    input token:       BOS    x_sigma_0 x_sigma_1 ... x_sigma_{n-2}
    current position:  0      sigma_0   sigma_1   ... sigma_{n-2}      (RoPE of keys; of queries: current)
    target position:   sigma_0 sigma_1  sigma_2   ... sigma_{n-1}      (learned embedding; RoPE of queries:
                                                                        target)
    target token:      x_sigma_0 ...                  x_sigma_{n-1}
Slot j sees slots <= j only, i.e. exactly x_sigma_<j with their true positions and the position
sigma_j it must fill, never x_sigma_j itself, so one forward pass gives the exact NLL of the order.
BOS sits at position 0 (any fixed choice works: the BOS embedding marks it; 0 keeps every
position id inside [0, max_len) for table-based RoPE or kernels).

Conditioning on the target position (the choice recorded here): a learned absolute embedding
`target_embed` [max_len, d_model] of sigma_j, added to the token embedding of slot j before the
first layer (the model's optional `target_positions_BL` input; the parameter exists only when
the model is initialized with target positions: the Objective's `target_positions`). Why:
  - sigma-GPT does exactly this (a second positional encoding, of the next token's position,
    alongside the current token's), so results are comparable to the paper;
  - it is the cheapest option: one table lookup, d_model * max_len parameters, no per-layer
    parameters (adaLN would add a modulation per layer and a second code path in every block);
  - RoPE keeps encoding the *current* positions of attended tokens, untouched; a second rotary
    channel for the target would have to split the head dims between the two roles and would
    only express target-minus-key offsets inside attention, whereas the absolute target is a
    property of the query slot that the MLPs can use from the first layer on; a two-stream
    (XLNet) query stream would double the attention cost.
The Transformer stays order-agnostic: it receives tokens, two position arrays and a mask kind.

Where RoPE puts the query (`model.query_positions`; auto = QUERY_POSITIONS below). Keys are always
rotated at their own (current) positions. `current` rotates slot j's query at its own position
sigma_{j-1}: the attention scores then see each known token's offset from the *previous* token
in the order, which in a random order says nothing about the position to fill. `target` rotates
it at sigma_j instead, so every q.k score is a function of (key position - target position):
how far each known token is from the position being predicted, the quantity a left-to-right
model gets for free (its target is always its position + 1). The target embedding stays in both
modes, so the MLPs still see the absolute target. No parameters change: a checkpoint loads in
either mode (but predicts well only in the one it was trained in; saved run configs name it, and
those saved before the option existed are read as `current`). The same switch applies wherever
this network runs: this order pass (training, yardstick, `eval --orders`, `score`), the fused
kernel (separate query and key positions) and the KV-cache samplers, whose new slot's query sits
at its target position while the cached keys keep their own.

Order distribution (cfg.objective): with probability l2r_fraction the identity, with
r2l_fraction the reversal, otherwise a uniform random permutation, independently per sequence
(AO-GPT found a share of fixed-order sequences helps the l2r likelihood).

Yardstick: `nll` is the exact NLL of the model read in the l2r order (exact: a proper
normalized likelihood of one model, directly comparable to l2r). `order_nll` scores any given
orders in one pass (used by fixed-order evaluation and by latent_order).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import model
from jaxorder.config import Config, ConfigError
from jaxorder.objectives.base import Objective, Option, OrderScoring, register
from jaxorder.objectives.common import special_ids, token_nll


def identity_orders(batch_size: int, n: int) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch_size, n))


def random_orders(rng: jax.Array, batch_size: int, n: int) -> jnp.ndarray:
    """Uniform random permutations [B, n] (argsort of iid uniforms)."""
    return jnp.argsort(jax.random.uniform(rng, (batch_size, n)), axis=1).astype(jnp.int32)


def sample_orders(rng: jax.Array, batch_size: int, n: int, l2r_fraction: float = 0.0,
                  r2l_fraction: float = 0.0) -> jnp.ndarray:
    """Orders [B, n]: identity w.p. l2r_fraction, reversal w.p. r2l_fraction, else uniform."""
    kind_rng, perm_rng = jax.random.split(rng)
    u_B = jax.random.uniform(kind_rng, (batch_size,))
    ident_Bn = identity_orders(batch_size, n)
    orders_Bn = random_orders(perm_rng, batch_size, n)
    orders_Bn = jnp.where((u_B < l2r_fraction + r2l_fraction)[:, None], ident_Bn[:, ::-1], orders_Bn)
    return jnp.where((u_B < l2r_fraction)[:, None], ident_Bn, orders_Bn)


def order_inputs(tokens_BL: jnp.ndarray, order_BL: jnp.ndarray,
                 cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The permuted pass's (input tokens, current positions, targets x_sigma_j), each [B, n]."""
    permuted_BL = jnp.take_along_axis(tokens_BL, order_BL, axis=1)
    bos_B1 = jnp.full_like(tokens_BL[:, :1], special_ids(cfg.model).bos)
    inputs_BL = jnp.concatenate([bos_B1, permuted_BL[:, :-1]], axis=1)
    positions_BL = jnp.concatenate([jnp.zeros_like(order_BL[:, :1]), order_BL[:, :-1]], axis=1)
    return inputs_BL, positions_BL, permuted_BL


def order_logits(params, tokens_BL: jnp.ndarray, order_BL: jnp.ndarray,
                 cfg: Config) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One causal pass over the permuted window: (logits [B, n, V] of slot j, targets x_sigma_j [B, n])."""
    inputs_BL, positions_BL, permuted_BL = order_inputs(tokens_BL, order_BL, cfg)
    logits_BLV = model.apply(params, cfg.model, inputs_BL, positions_BL, "causal",
                             target_positions_BL=order_BL)
    return logits_BLV, permuted_BL


def order_token_nll(params, tokens_BL: jnp.ndarray, order_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """-log p(x_sigma_j | x_sigma_<j) per slot j [B, n] (slot order, not position order)."""
    logits_BLV, targets_BL = order_logits(params, tokens_BL, order_BL, cfg)
    return token_nll(logits_BLV, targets_BL)


def position_token_nll(params, tokens_BL: jnp.ndarray, order_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """order_token_nll moved to position order [B, n]: entry i is the term of the slot that fills i."""
    slot_BL = order_token_nll(params, tokens_BL, order_BL, cfg)
    rows_B1 = jnp.arange(tokens_BL.shape[0])[:, None]
    return jnp.zeros_like(slot_BL).at[rows_B1, order_BL].set(slot_BL)


def identity_token_nll(params, tokens_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """The yardstick's per-token terms [B, n]: the l2r order, whose slots are positions."""
    return order_token_nll(params, tokens_BL, identity_orders(*tokens_BL.shape), cfg)


def order_nll(params, tokens_BL: jnp.ndarray, order_BL: jnp.ndarray, cfg: Config) -> jnp.ndarray:
    """Exact -log p(x | sigma) per sequence in nats [B], for given orders [B, n], in one pass."""
    return order_token_nll(params, tokens_BL, order_BL, cfg).sum(axis=1)


def position_nll(params, tokens_BL: jnp.ndarray, rng: jax.Array, cfg: Config) -> dict[str, jnp.ndarray]:
    """The exact per-position NLL [B, L] of the l2r and the r2l order (slot j of r2l fills L-1-j)."""
    del rng
    ident_BL = identity_orders(*tokens_BL.shape)
    return {"l2r": position_token_nll(params, tokens_BL, ident_BL, cfg),
            "r2l": position_token_nll(params, tokens_BL, ident_BL[:, ::-1], cfg)}


def nll(params, batch: dict, rng: jax.Array, cfg: Config) -> jnp.ndarray:
    """Exact per-sequence NLL in nats [B] of the model read left to right."""
    del rng
    tokens_BL = batch["tokens"]
    return order_nll(params, tokens_BL, identity_orders(*tokens_BL.shape), cfg)


def loss(params, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jnp.ndarray, dict]:
    tokens_BL = batch["tokens"]
    o = cfg.objective
    order_BL = sample_orders(rng, *tokens_BL.shape, o.l2r_fraction, o.r2l_fraction)
    value = order_token_nll(params, tokens_BL, order_BL, cfg).mean()
    return value, {"loss": value, "nll_per_token": value}


def analysis_inputs(tokens_NL: np.ndarray, cfg: Config, mask_rate: float, seed: int) -> tuple:
    """The training input of the identity (left-to-right) order: [BOS, x_0..x_{L-2}] at positions
    [0, 0..L-2] with target positions 0..L-1, causal (mask_rate does not apply)."""
    del mask_rate, seed
    N, L = tokens_NL.shape
    bos_N1 = np.full_like(tokens_NL[:, :1], special_ids(cfg.model).bos)
    inputs_NL = np.concatenate([bos_N1, tokens_NL[:, :-1]], axis=1).astype(np.int32)
    order_NL = np.broadcast_to(np.arange(L, dtype=np.int32), (N, L))
    positions_NL = np.concatenate([np.zeros((N, 1), np.int32), order_NL[:, :-1]], axis=1)
    return inputs_NL, "causal", 0.0, positions_NL, order_NL


OPTIONS = (
    Option("l2r_fraction", 0.0, "share of sequences trained in the l2r order"),
    Option("r2l_fraction", 0.0, "share of sequences trained in the r2l order"),
)


def validate_config(cfg: Config) -> None:
    o = cfg.objective
    if o.l2r_fraction < 0 or o.r2l_fraction < 0 or o.l2r_fraction + o.r2l_fraction > 1:
        raise ConfigError("objective.l2r_fraction and r2l_fraction must be >= 0 and sum to <= 1")


# The query rotation of any-order networks under model.query_positions=auto (ao_ar and the
# families sharing its pass); measured in docs/study.md, "Query positions of any-order models".
QUERY_POSITIONS = "target"

OBJECTIVE = register(Objective(
    name="ao_ar", loss=loss, nll=nll, exact=True, yardstick="exact (l2r order)", sampling="any_order",
    default_sampler="l2r", target_positions=True, query_positions=QUERY_POSITIONS,
    order_scoring=OrderScoring(order_nll=order_nll, mixture_bound=True, order_token_nll=position_token_nll),
    token_nll=identity_token_nll, position_nll=position_nll, options=OPTIONS,
    validate_config=validate_config, analysis_inputs=analysis_inputs))
