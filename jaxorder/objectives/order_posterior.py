"""learned_order's posterior over orders: Plackett-Luce, optionally with a score per transition.

Each window has scores s_i (one per position). Without a table, q is Plackett-Luce: the j-th choice
is softmax_i(s_i) over the open positions, sampled in one shot by Gumbel-top-n, sigma =
argsort(-(s + G)), and its mode is argsort(-s). With a table T [max_len + 1, max_len]
(`objective.q_transitions`; row max_len is the start), the j-th choice is softmax over the open
positions of s_i + T[sigma_{j-1}, i]: a score for *which position follows which*, so an adjacency
("0 right after 4") is one parameter instead of an arrangement of all the global scores. That q is
sampled choice by choice (a Gumbel-max per step), and its mode is approximated by the greedy order
(argmax per step). In both cases

    log q(sigma) = sum_j [ l_j(sigma_j) - logsumexp_{i open at j} l_j(i) ],
    l_j(i) = s_i (+ T[sigma_{j-1}, i]),

a normalized distribution over the n! orders. Sampling never passes a gradient (orders are integers);
q's gradient flows through log q only.

Where q starts (`objective.q_init`): global scores 0 (uniform), -scale*i (l2r), +scale*i (r2l), or,
for a named order sigma (`perm:...`, a one-line `perm@FILE`), g_sigma_r = -scale*r, so that order is
q's mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxorder import orders
from jaxorder.errors import ConfigError

Q_INITS = ("uniform", "l2r", "r2l")  # or any named order: perm:5,1,2,3,4,0,6- or perm@FILE (one line)


def initial_order(q_init: str, max_len: int) -> np.ndarray:
    """The order [max_len] a `perm:` or `perm@FILE` q_init names; ConfigError if it is none."""
    where = "objective.q_init"
    if q_init.startswith(orders.FILE_PREFIX):
        path = q_init[len(orders.FILE_PREFIX):]
        perms = orders.read_file(path)
        if len(perms) != 1:
            raise ConfigError(f"{where}={q_init} has {len(perms)} lines; q starts from one order for every "
                              f"window, so give a file with one permutation")
        return orders.resolve(perms[0], max_len, f"{where}={q_init}")
    if not q_init.startswith(orders.PREFIX):
        raise ConfigError(f"{where}={q_init!r} must be one of {', '.join(Q_INITS)}, perm:INDICES (e.g. "
                          f"perm:5,1,2,3,4,0,6-) or perm@FILE")
    return orders.named_or_perm(q_init, max_len, where)


def initial_global_scores(q_init: str, scale: float, max_len: int) -> jnp.ndarray:
    """g [max_len]: 0 (uniform), -scale*i (l2r: position 0 most likely first), +scale*i (r2l) or, for a
    named order sigma, g_sigma_r = -scale*r (its r-th position gets the r-th highest score)."""
    i_P = jnp.arange(max_len, dtype=jnp.float32)
    if q_init in Q_INITS:
        return {"uniform": 0.0 * i_P, "l2r": -scale * i_P, "r2l": scale * i_P}[q_init]
    rank_P = np.argsort(initial_order(q_init, max_len))
    return -scale * jnp.asarray(rank_P, dtype=jnp.float32)


def previous_positions(order_NL: jnp.ndarray, start: int) -> jnp.ndarray:
    """[N, n]: sigma_{j-1} at slot j, and `start` (the table's start row) at slot 0."""
    return jnp.concatenate([jnp.full_like(order_NL[:, :1], start), order_NL[:, :-1]], axis=1)


def open_mask(order_NL: jnp.ndarray) -> jnp.ndarray:
    """bool [N, n (slot j), n (position i)]: position i is not yet generated at slot j (i not in sigma_<j)."""
    N, n = order_NL.shape
    slot_L = jnp.arange(n, dtype=order_NL.dtype)
    rank_NL = jnp.zeros_like(order_NL).at[jnp.arange(N)[:, None], order_NL].set(slot_L)
    return rank_NL[:, None, :] >= jnp.arange(n)[None, :, None]


def log_prob(s_BL: jnp.ndarray, order_BKL: jnp.ndarray, table: jnp.ndarray | None = None) -> jnp.ndarray:
    """log q(sigma) [B, K] of K orders per window."""
    if table is None:  # Plackett-Luce: the open set at slot j is sigma_>=j, a reverse cumulative lse
        s_BKL = jnp.take_along_axis(jnp.broadcast_to(s_BL[:, None], order_BKL.shape), order_BKL, axis=2)
        return (s_BKL - jax.lax.cumlogsumexp(s_BKL, axis=2, reverse=True)).sum(axis=2)
    B, K, n = order_BKL.shape
    order_NL = order_BKL.reshape(B * K, n)
    rows_NLn = table[previous_positions(order_NL, table.shape[1])][..., :n]
    logits_NLn = jnp.repeat(s_BL, K, axis=0)[:, None, :] + rows_NLn
    logits_NLn = jnp.where(open_mask(order_NL), logits_NLn, -jnp.inf)
    chosen_NL = jnp.take_along_axis(logits_NLn, order_NL[..., None], axis=2)[..., 0]
    return (chosen_NL - jax.nn.logsumexp(logits_NLn, axis=2)).sum(axis=1).reshape(B, K)


def _choose_in_turn(s_NL: jnp.ndarray, table: jnp.ndarray, noise_LNn: jnp.ndarray) -> jnp.ndarray:
    """Orders [N, n] picked one position per step: argmax over open i of s_i + T[previous, i] + noise."""
    N, n = s_NL.shape

    def step(carry, noise_Nn):
        open_Nn, prev_N = carry
        logits_Nn = jnp.where(open_Nn, s_NL + table[prev_N, :n] + noise_Nn, -jnp.inf)
        pick_N = jnp.argmax(logits_Nn, axis=1).astype(jnp.int32)
        return (open_Nn & (jnp.arange(n) != pick_N[:, None]), pick_N), pick_N

    start = (jnp.ones((N, n), bool), jnp.full((N,), table.shape[1], jnp.int32))
    return jax.lax.scan(step, start, noise_LNn)[1].T


def sample(s_BL: jnp.ndarray, rng: jax.Array, num: int, table: jnp.ndarray | None = None) -> jnp.ndarray:
    """num draws per window [B, num, n]."""
    B, n = s_BL.shape
    s_BL = jax.lax.stop_gradient(s_BL)
    if table is None:  # Gumbel-top-n: all n choices of a Plackett-Luce draw at once
        gumbel_BKL = jax.random.gumbel(rng, (B, num, n))
        return jnp.argsort(-(s_BL[:, None] + gumbel_BKL), axis=2).astype(jnp.int32)
    noise_LNn = jax.random.gumbel(rng, (n, B * num, n))
    orders_NL = _choose_in_turn(jnp.repeat(s_BL, num, axis=0), jax.lax.stop_gradient(table), noise_LNn)
    return orders_NL.reshape(B, num, n)


def mode(s_BL: jnp.ndarray, table: jnp.ndarray | None = None) -> jnp.ndarray:
    """[B, n]: the Plackett-Luce mode argsort(-s), or with a table the greedy order (most likely choice
    at every step; the exact mode would need a search over orders)."""
    s_BL = jax.lax.stop_gradient(s_BL)
    if table is None:
        return jnp.argsort(-s_BL, axis=1).astype(jnp.int32)
    B, n = s_BL.shape
    return _choose_in_turn(s_BL, jax.lax.stop_gradient(table), jnp.zeros((n, B, n), s_BL.dtype))


def first_choice_entropy(s_BL: jnp.ndarray, table: jnp.ndarray | None = None) -> jnp.ndarray:
    """Entropy (nats) of q's first choice [B]: softmax(s), plus the table's start row if there is one."""
    if table is not None:
        s_BL = s_BL + table[table.shape[1], : s_BL.shape[1]]
    logp_BL = jax.nn.log_softmax(s_BL, axis=1)
    return -(jnp.exp(logp_BL) * logp_BL).sum(axis=1)
