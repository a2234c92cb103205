"""Order objectives (bd3, ao_ar, latent_order) against brute-force enumeration on a tiny vocabulary.

Vocabulary: 4 symbols + PAD, MASK, BOS, EOS; windows of n = 3 or 4 tokens; random (untrained)
parameters, so every conditional is a non-trivial function of its inputs.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives, train
from jaxorder.model.attention import attention_mask
from jaxorder.objectives import bd3, mdm
from jaxorder.objectives.common import special_ids

SYMBOLS = 4
VOCAB = SYMBOLS + 4


def tiny_cfg(n: int = 4, **over) -> config_lib.Config:
    ov = [f"model.vocab_size={VOCAB}", "model.d_model=16", "model.n_layers=2", "model.n_heads=2",
          "model.max_len=16", f"data.seq_len={n}", "data.batch_size=8"] + [f"{k}={v}" for k, v in over.items()]
    return config_lib.load(None, ov)


apply = jax.jit(model.apply, static_argnums=(1, 4))  # eager op-by-op dispatch is slow on CPU
bd3_masked_token_nll = jax.jit(bd3.masked_token_nll, static_argnums=(4, 5))
bd3_elbo_from = jax.jit(bd3.elbo_from, static_argnums=(5, 6))
bd3_noisy_logits = jax.jit(bd3.noisy_logits, static_argnums=(3, 4))


def log_softmax_np(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def subs_log_softmax_np(logits, mask_id):
    x = np.array(logits, np.float64)
    x[..., mask_id] = -np.inf
    return log_softmax_np(x)


# ------------------------------------------------------------------------------------------ bd3

def _bd3_reference_mask(n: int, b: int) -> np.ndarray:
    """The four-part definition of design.md §5, written out element by element."""
    out = np.zeros((2 * n, 2 * n), bool)
    for i in range(2 * n):
        for j in range(2 * n):
            qi_clean, kj_clean = i >= n, j >= n
            qblock, kblock = (i - n * qi_clean) // b, (j - n * kj_clean) // b
            if not qi_clean and not kj_clean:
                out[i, j] = qblock == kblock  # noisy -> noisy: same block
            elif not qi_clean and kj_clean:
                out[i, j] = kblock < qblock  # noisy -> clean: strictly earlier blocks
            elif qi_clean and kj_clean:
                out[i, j] = kblock <= qblock  # clean -> clean: block-causal
            else:
                out[i, j] = False  # clean -> noisy: never
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8])
def test_bd3_mask_equals_four_part_definition(n):
    for b in [d for d in range(1, n + 1) if n % d == 0]:
        np.testing.assert_array_equal(np.asarray(attention_mask(f"bd3:{b}", 2 * n)), _bd3_reference_mask(n, b),
                                      err_msg=f"n={n} b={b}")
    with pytest.raises(ValueError):
        attention_mask("bd3:0", 2 * n)
    with pytest.raises(ValueError):
        attention_mask("bd3:2", 2 * n + 1)


@pytest.fixture(scope="module")
def bd3_setup():
    n = 4
    cfg = tiny_cfg(n, **{"objective.name": "bd3", "objective.block_size": 2})
    params = model.init_params(cfg.model, jax.random.key(3), n)
    x = jax.random.randint(jax.random.key(4), (2, n), 0, SYMBOLS)
    return cfg, params, x


def _all_masks(n):
    return np.array(list(itertools.product([False, True], repeat=n)))


def test_bd3_b1_elbo_is_the_chain_rule_of_its_conditionals(bd3_setup):
    """b = 1 reproduces the L2R NLL structure.

    Statement: with b = 1 every block is one token, so the bd3 conditional of a masked x_i sees
    exactly the clean prefix x_<i (plus the MASK at its own position), whatever else is masked.
    Brute force: for each i, a separate *causal* pass over [x_0..x_{i-1}, MASK] at positions 0..i
    (no bd3 mask involved) gives c_i = -log p(x_i | x_<i) (SUBS). Then (1) at every masked position
    of any corruption, the bd3 per-token NLL equals c_i; (2) for any block times t, the exact
    expectation over the 2^n corruptions of the ELBO  sum_i m_i c_i / t_i  equals sum_i c_i, the
    chain-rule NLL in reading order: b = 1 is AR. (The network input differs from l2r.py's
    [BOS, x_<i] layout, so these are the conditionals of the bd3 network, not the l2r objective's.)
    """
    cfg, params, x = bd3_setup
    n = x.shape[1]
    mask_id = special_ids(cfg.model).mask
    c = np.zeros((x.shape[0], n))
    for i in range(n):
        inp = jnp.concatenate([x[:, :i], jnp.full((x.shape[0], 1), mask_id, x.dtype)], axis=1)
        logits = apply(params, cfg.model, inp, jnp.broadcast_to(jnp.arange(i + 1), inp.shape), "causal")
        logp = subs_log_softmax_np(logits[:, -1], mask_id)
        c[:, i] = -logp[np.arange(x.shape[0]), np.asarray(x[:, i])]

    masks = _all_masks(n)  # [2^n, n]
    for b_idx in range(x.shape[0]):
        xs = jnp.tile(x[b_idx:b_idx + 1], (len(masks), 1))
        x_t = jnp.where(masks, mask_id, xs)
        per_tok = np.asarray(bd3_masked_token_nll(params, xs, x_t, jnp.asarray(masks), cfg, 1))
        np.testing.assert_allclose(per_tok[masks], np.broadcast_to(c[b_idx], masks.shape)[masks], rtol=1e-5)
        assert np.all(per_tok[~masks] == 0)
        for t in (np.full(n, 0.5), np.array([0.1, 0.9, 0.3, 0.7])):
            elbo = np.asarray(bd3_elbo_from(params, xs, x_t, jnp.asarray(masks), jnp.tile(jnp.asarray(t)[None], (len(masks), 1)),
                                            cfg, 1))
            prob = np.prod(np.where(masks, t, 1 - t), axis=1)
            np.testing.assert_allclose((prob * elbo).sum(), c[b_idx].sum(), rtol=1e-5)


def test_bd3_bn_logits_and_elbo_equal_mdm(bd3_setup):
    """b = n reproduces the MDM ELBO on the same parameters.

    Statement: with one block the noisy half attends only to itself (noisy->clean needs a strictly
    earlier block), so for any corruption x_t its logits equal the bidirectional model's on x_t at
    positions 0..n-1 (checked for all 2^n masks, to 1e-5), and for the same t and mask the bd3 ELBO
    (1/t) sum_masked -log p equals mdm's, so the two ELBOs agree in distribution (same t ~ U(eps,1)).
    """
    cfg, params, x = bd3_setup
    n = x.shape[1]
    mask_id = special_ids(cfg.model).mask
    masks = jnp.asarray(_all_masks(n))
    xs = jnp.tile(x[:1], (len(masks), 1))
    x_t = jnp.where(masks, mask_id, xs)
    a = bd3_noisy_logits(params, x_t, xs, cfg, n)
    b = apply(params, cfg.model, x_t, jnp.broadcast_to(jnp.arange(n), x_t.shape), "bidirectional")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    t = jnp.linspace(0.05, 1.0, len(masks))
    elbo_bd3 = bd3_elbo_from(params, xs, x_t, masks, t[:, None], cfg, n)
    elbo_mdm = mdm.masked_token_nll(params, xs, x_t, masks, cfg).sum(axis=1) / t
    np.testing.assert_allclose(np.asarray(elbo_bd3), np.asarray(elbo_mdm), rtol=1e-5)


def test_bd3_noisy_block_sees_no_answer_and_no_future(bd3_setup):
    """b = 2, n = 4: block 0's noisy logits ignore everything in block 1 (noisy or clean), and
    block 1's noisy logits ignore its own clean tokens (the answer) but see clean block 0."""
    cfg, params, x = bd3_setup
    mask_id = special_ids(cfg.model).mask
    x_t = x.at[:, 1].set(mask_id).at[:, 2].set(mask_id)
    base = np.asarray(bd3_noisy_logits(params, x_t, x, cfg, 2))
    other = (x + 1) % SYMBOLS
    x_future = x.at[:, 2:].set(other[:, 2:])  # clean block 1 changed
    x_t_future = x_t.at[:, 3].set(other[:, 3])  # noisy block 1 changed
    c1 = np.asarray(bd3_noisy_logits(params, x_t, x_future, cfg, 2))
    c2 = np.asarray(bd3_noisy_logits(params, x_t_future, x, cfg, 2))
    np.testing.assert_allclose(c1, base, atol=1e-6)  # no block sees clean block 1 (its own answer / the future)
    np.testing.assert_allclose(c2[:, :2], base[:, :2], atol=1e-6)
    x_past = x.at[:, 0].set(other[:, 0])  # clean block 0 changed: block 1 must notice
    c3 = np.asarray(bd3_noisy_logits(params, x_t, x_past, cfg, 2))
    np.testing.assert_allclose(c3[:, :2], base[:, :2], atol=1e-6)
    assert not np.allclose(c3[:, 2:], base[:, 2:], atol=1e-4)


def test_bd3_times_are_clipped_and_stratified():
    t = np.asarray(bd3.block_times(jax.random.key(0), 8, 3, 0.3, 0.8, 1e-3, True))
    assert t.shape == (8, 3) and t.min() >= 0.3 and t.max() <= 0.8
    u = (t - 0.3) / 0.5
    for k in range(3):
        np.testing.assert_allclose(np.sort(np.mod(u[:, k] - u[0, k], 1.0)), np.arange(8) / 8, atol=1e-5)
    assert np.asarray(bd3.block_times(jax.random.key(0), 4, 2, 0.0, 1e-6, 1e-3, False)).min() >= 1e-3


# ------------------------------------------------------------------------------ every objective

NEW_OBJECTIVES = ["bd3"]


@pytest.mark.parametrize("name", NEW_OBJECTIVES)
def test_registry_and_nll_interface(name):
    module = objectives.get(name)
    assert callable(module.loss) and callable(module.nll) and isinstance(module.EXACT, bool)
    cfg = tiny_cfg(4, **{"objective.name": name})
    state = train.init_state(cfg, train.make_optimizer(cfg))
    tokens = jax.random.randint(jax.random.key(0), (3, 4), 0, SYMBOLS)
    nll_B, exact = module.nll(state["params"], {"tokens": tokens}, jax.random.key(1), cfg)
    assert nll_B.shape == (3,) and np.all(np.isfinite(np.asarray(nll_B))) and exact == module.EXACT


@pytest.mark.parametrize("name", NEW_OBJECTIVES)
def test_trains_with_finite_decreasing_loss(name):
    cfg = tiny_cfg(8, **{"objective.name": name, "optimizer.lr": 1e-2, "optimizer.warmup_steps": 0,
                         "train.steps": 25})
    optimizer = train.make_optimizer(cfg)
    state = train.init_state(cfg, optimizer)
    step = jax.jit(train.make_train_step(cfg, optimizer))
    tokens = jnp.tile(jnp.arange(8, dtype=jnp.int32) % SYMBOLS, (8, 1))  # a fixed, learnable batch
    losses = []
    for _ in range(25):
        state, metrics = step(state, tokens)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
