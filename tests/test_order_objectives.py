"""Order objectives (bd3, ao_ar, latent_order) against brute-force enumeration on a tiny vocabulary.

Vocabulary: 4 symbols + PAD, MASK, BOS, EOS; windows of n = 3 or 4 tokens; random (untrained)
parameters, so every conditional is a non-trivial function of its inputs.
"""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives
from jaxorder.model.attention import attention_mask
from jaxorder.objectives import ao_ar, bd3, latent_order, mdm
from jaxorder.objectives.common import special_ids
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state
from jaxorder.training.step import make_train_step

SYMBOLS = 4
VOCAB = SYMBOLS + 4


def tiny_cfg(n: int = 4, **over) -> config_lib.Config:
    ov = ([f"model.vocab_size={VOCAB}", "model.d_model=16", "model.n_layers=2", "model.n_heads=2",
           "model.max_len=16", f"data.seq_len={n}", "data.batch_size=8"]
          + [f"{k}={v}" for k, v in over.items()])
    return config_lib.load(None, ov)


# eager op-by-op dispatch is slow on CPU: every model call in this file is jitted
apply = jax.jit(model.apply, static_argnums=(1, 4))
_init_params = jax.jit(model.init_params, static_argnums=(0, 2, 3))


def init_params(model_cfg, rng, target_positions: bool):
    """One compiled init for the whole file (initializing is the slowest compile here)."""
    params = _init_params(model_cfg, rng, 4, True)
    return params if target_positions else {k: v for k, v in params.items() if k != "target_embed"}
bd3_masked_token_nll = jax.jit(bd3.masked_token_nll, static_argnums=(4, 5))
bd3_elbo_from = jax.jit(bd3.elbo_from, static_argnums=(5, 6))
bd3_noisy_logits = jax.jit(bd3.noisy_logits, static_argnums=(3, 4))
mdm_masked_token_nll = jax.jit(mdm.masked_token_nll, static_argnums=(4,))
order_nll = jax.jit(ao_ar.order_nll, static_argnums=(3,))
orders_nll = jax.jit(latent_order.orders_nll, static_argnums=(3,))


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
    """The four-part definition of docs/design.md, 'Block diffusion', written out element by element."""
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
        np.testing.assert_array_equal(np.asarray(attention_mask(f"bd3:{b}", 2 * n)),
                                      _bd3_reference_mask(n, b), err_msg=f"n={n} b={b}")
    with pytest.raises(ValueError):
        attention_mask("bd3:0", 2 * n)
    with pytest.raises(ValueError):
        attention_mask("bd3:2", 2 * n + 1)


@pytest.fixture(scope="module")
def bd3_setup():
    n = 4
    cfg = tiny_cfg(n, **{"objective.name": "bd3", "objective.block_size": 2})
    params = init_params(cfg.model, jax.random.key(3), False)
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
            elbo = np.asarray(bd3_elbo_from(params, xs, x_t, jnp.asarray(masks),
                                            jnp.tile(jnp.asarray(t)[None], (len(masks), 1)), cfg, 1))
            prob = np.prod(np.where(masks, t, 1 - t), axis=1)
            np.testing.assert_allclose((prob * elbo).sum(), c[b_idx].sum(), rtol=1e-5)


def _prefix_network(n_symbols: int, vocab: int, length: int, seed: int = 0):
    """A stand-in for `model.apply` whose logits at a query slot are a fixed random function of the
    *content* tokens the slot may attend to (the mask kind's own attention mask; specials such as
    BOS and MASK carry nothing), read in position order: the r-th visible content token v adds
    W[r, v]. Positions enter only through that order, so the function does not care which layout
    (l2r's [BOS, x_<i] or bd3's [x_t ; x]) shows it the prefix. Special ids get a logit of -1e9."""
    rng = np.random.default_rng(seed)
    w_RSV = jnp.asarray(rng.normal(size=(length, n_symbols, vocab)), jnp.float32)
    bias_CV = jnp.asarray(rng.normal(size=(length + 1, vocab)), jnp.float32)
    special_V = jnp.arange(vocab) >= n_symbols

    def fake_apply(params, model_cfg, inputs_BL, positions_BL, mask_kind):
        del params, model_cfg
        content_BL = inputs_BL < n_symbols
        visible_BQK = attention_mask(mask_kind, inputs_BL.shape[1])[None] & content_BL[:, None, :]
        before_BKK = positions_BL[:, None, :] < positions_BL[:, :, None]  # [b, k, k']: pos k' < pos k
        rank_BQK = jnp.einsum("bqj,bkj->bqk", visible_BQK.astype(jnp.int32), before_BKK.astype(jnp.int32))
        symbol_BL = jnp.minimum(inputs_BL, n_symbols - 1)
        contrib_BQKV = w_RSV[jnp.minimum(rank_BQK, length - 1), symbol_BL[:, None, :]]
        logits_BQV = (jnp.where(visible_BQK[..., None], contrib_BQKV, 0.0).sum(axis=2)
                      + bias_CV[visible_BQK.sum(axis=2)])
        return jnp.where(special_V, -1e9, logits_BQV)

    return fake_apply


def test_bd3_b1_and_l2r_losses_are_the_same_function_of_the_prefix_conditionals(monkeypatch):
    """b = 1 is l2r: on the same batch, the two objectives compute the same losses from the same
    conditionals p(x_i | x_<i).

    The two layouts cannot share a Transformer's weights (l2r reads x_i off the slot holding x_{i-1},
    bd3 off a MASK slot that sees the clean x_<i), so the network is replaced by `_prefix_network`,
    which depends only on what each slot may see under the objective's own attention mask. Then
    (1) for any corruption and block times, bd3's ELBO = sum_i m_i / t_i * (l2r's per-token NLL),
    and with everything masked at t = 1 it is l2r's `nll`; (2) the registered bd3 `nll` and `loss`
    average, over time draws, to l2r's `nll` and `loss` within 4 standard errors (the time draw is
    the only difference). A bd3 slot that saw its own clean token or a later one, a shifted l2r
    input, or a wrong 1/t weight fails (1)."""
    from jaxorder.objectives import l2r

    n, batch = 5, 6
    monkeypatch.setattr(model, "apply", _prefix_network(SYMBOLS, VOCAB, 2 * n))
    cfg_l2r = tiny_cfg(n, **{"objective.name": "l2r"})
    cfg_bd3 = tiny_cfg(n, **{"objective.name": "bd3", "objective.block_size": 1, "objective.mdm_eps": 1e-3})
    x = jax.random.randint(jax.random.key(7), (batch, n), 0, SYMBOLS)
    l2r_tok = np.asarray(l2r.sequence_token_nll(None, x, cfg_l2r), np.float64)
    assert l2r_tok.std() > 0.1  # the conditionals genuinely vary
    l2r_nll = np.asarray(objectives.of(cfg_l2r).nll(None, {"tokens": x}, jax.random.key(0), cfg_l2r))
    np.testing.assert_allclose(l2r_nll, l2r_tok.sum(axis=1), rtol=1e-6)

    mask_id = special_ids(cfg_bd3.model).mask
    everything = jnp.ones(x.shape, bool)
    ones = jnp.ones(x.shape, jnp.float32)
    full = bd3.elbo_from(None, x, jnp.full_like(x, mask_id), everything, ones, cfg_bd3, 1)
    np.testing.assert_allclose(np.asarray(full), l2r_nll, rtol=1e-5)
    rng = np.random.default_rng(1)
    for _ in range(4):
        m = rng.random(x.shape) < 0.5
        t = rng.uniform(0.05, 1.0, x.shape)
        elbo = bd3.elbo_from(None, x, jnp.where(m, mask_id, x), jnp.asarray(m), jnp.asarray(t, jnp.float32),
                             cfg_bd3, 1)
        np.testing.assert_allclose(np.asarray(elbo), (m / t * l2r_tok).sum(axis=1), rtol=1e-5)

    draws = 2000
    keys = jax.random.split(jax.random.key(2), draws)
    cfg_one = dataclasses.replace(cfg_bd3, eval=dataclasses.replace(cfg_bd3.eval, mdm_time_samples=1))
    batch_of = {"tokens": x}
    nll_SB = np.asarray(jax.jit(jax.vmap(
        lambda k: objectives.of(cfg_one).nll(None, batch_of, k, cfg_one)))(keys))
    loss_S = np.asarray(jax.jit(jax.vmap(
        lambda k: objectives.of(cfg_bd3).loss(None, batch_of, k, cfg_bd3)[0]))(keys))
    se_B = nll_SB.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(nll_SB.mean(axis=0) - l2r_nll) < 4 * se_B), (nll_SB.mean(axis=0), l2r_nll, se_B)
    l2r_loss = float(objectives.of(cfg_l2r).loss(None, {"tokens": x}, jax.random.key(0), cfg_l2r)[0])
    assert abs(loss_S.mean() - l2r_loss) < 4 * loss_S.std(ddof=1) / np.sqrt(draws), (loss_S.mean(), l2r_loss)


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
    elbo_mdm = mdm_masked_token_nll(params, xs, x_t, masks, cfg).sum(axis=1) / t
    np.testing.assert_allclose(np.asarray(elbo_bd3), np.asarray(elbo_mdm), rtol=1e-5)


@pytest.mark.parametrize("antithetic", [False, True])
def test_bd3_bn_objective_equals_mdm_objective_on_the_same_batch_and_rng(bd3_setup, antithetic):
    """The registered bd3 objective with b = n and the mdm objective: same params, batch and rng give the
    same validation nll and training loss, up to the time draw.

    What is compared: `objectives.of(cfg).nll` and `.loss` end to end. Both split the rng into a time key
    and a mask key and mask where a uniform < t, so the masks are the same whenever the times are; the
    times differ only in how eps enters (bd3: max(u, eps), mdm: eps + (1 - eps) u, |difference| <= eps).
    With mdm_eps = 1e-6 the draws coincide except with probability ~1e-6 per token, so the losses agree
    to 1e-4 relative. (A bd3 that drew its mask or time from another key, or mixed block times across
    the window, fails.) The test above checks the same identity for a given (t, mask)."""
    _, params, x = bd3_setup
    n = x.shape[1]
    common = {"objective.mdm_eps": 1e-6, "objective.antithetic": antithetic, "eval.mdm_time_samples": 3}
    cfg_bd3 = tiny_cfg(n, **{"objective.name": "bd3", "objective.block_size": n}, **common)
    cfg_mdm = tiny_cfg(n, **{"objective.name": "mdm"}, **common)
    tokens = jnp.tile(x, (4, 1))  # 8 rows: the antithetic shift k/B spreads over the batch
    for seed in range(3):
        rng = jax.random.key(seed)
        got = [jax.jit(lambda p, r, c=c: objectives.of(c).nll(p, {"tokens": tokens}, r, c))(params, rng)
               for c in (cfg_bd3, cfg_mdm)]
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(got[1]), rtol=1e-4)
        loss_fns = [jax.jit(lambda p, r, c=c: objectives.of(c).loss(p, {"tokens": tokens}, r, c)[0])
                    for c in (cfg_bd3, cfg_mdm)]
        loss = [float(f(params, rng)) for f in loss_fns]
        assert loss[0] == pytest.approx(loss[1], rel=1e-4)


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
    # no block sees clean block 1 (its own answer / the future)
    np.testing.assert_allclose(c1, base, atol=1e-6)
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


def test_bd3_corrupt_and_elbo_use_each_tokens_own_block_time(bd3_setup):
    """n = 4, b = 2: token i is in block i // 2, so it is masked with probability t_{i // 2} and its NLL
    is weighted by 1 / t_{i // 2}. (The b = 1 and b = n tests cannot tell blocks apart: there the
    per-token times of a repeat and of a tile coincide.)"""
    cfg, params, x = bd3_setup
    mask_id = special_ids(cfg.model).mask
    t01 = jnp.asarray([[0.0, 1.0], [1.0, 0.0]])  # u ~ U[0, 1): t = 0 never masks, t = 1 always does
    x_t, is_masked = bd3.corrupt(x, t01, jax.random.key(0), mask_id, 2)
    want = np.array([[False, False, True, True], [True, True, False, False]])
    np.testing.assert_array_equal(np.asarray(is_masked), want)
    np.testing.assert_array_equal(np.asarray(x_t), np.where(want, mask_id, np.asarray(x)))

    everything = jnp.ones(x.shape, bool)
    x_all = jnp.full_like(x, mask_id)
    nll = np.asarray(bd3_masked_token_nll(params, x, x_all, everything, cfg, 2), np.float64)
    t = np.array([[0.25, 0.5], [0.8, 0.1]])
    elbo = np.asarray(bd3_elbo_from(params, x, x_all, everything, jnp.asarray(t, jnp.float32), cfg, 2))
    np.testing.assert_allclose(elbo, (nll / t[:, [0, 0, 1, 1]]).sum(axis=1), rtol=1e-5)


# ----------------------------------------------------------------------------------------- ao_ar

@pytest.fixture(scope="module")
def ao_setup():
    n = 4
    cfg = tiny_cfg(n, **{"objective.name": "ao_ar"})
    params = init_params(cfg.model, jax.random.key(5), True)
    x = jnp.asarray([[2, 0, 3, 3], [1, 1, 0, 2]], jnp.int32)
    return cfg, params, x


def _brute_force_order_nll(params, cfg, x, orders) -> np.ndarray:
    """[B, O]: for each sequence and order, n separate causal passes; pass j sees only
    [BOS, x_s0..x_s(j-1)] at positions [0, s0..s(j-1)] with targets [s0..sj] and predicts x_sj
    from its last slot (no permuted full sequence is ever built)."""
    B, n = x.shape
    bos = special_ids(cfg.model).bos
    orders = np.asarray(orders)
    out = np.zeros((B, len(orders)))
    xs = np.repeat(np.asarray(x), len(orders), axis=0)  # row b*O + o
    os_ = np.tile(orders, (B, 1))
    for j in range(n):
        prefix = np.take_along_axis(xs, os_[:, :j], axis=1)
        inp = np.concatenate([np.full((len(xs), 1), bos), prefix], axis=1)
        pos = np.concatenate([np.zeros((len(xs), 1), int), os_[:, :j]], axis=1)
        logits = apply(params, cfg.model, jnp.asarray(inp), jnp.asarray(pos), "causal",
                       jnp.asarray(os_[:, :j + 1]))
        logp = log_softmax_np(logits[:, -1])
        target = xs[np.arange(len(xs)), os_[:, j]]
        out -= logp[np.arange(len(xs)), target].reshape(B, len(orders))
    return out


def test_ao_ar_one_pass_nll_equals_brute_force_chain_rule(ao_setup):
    """For all 4! orders of two sequences, the one-pass order NLL equals the chain rule built from
    n separate prefix passes (1e-5): the permuted causal pass leaks no target token."""
    cfg, params, x = ao_setup
    orders = np.array(list(itertools.permutations(range(x.shape[1]))))
    brute = _brute_force_order_nll(params, cfg, x, orders)
    one_pass = np.stack([np.asarray(order_nll(params, jnp.tile(x[b:b + 1], (len(orders), 1)),
                                              jnp.asarray(orders), cfg))
                         for b in range(x.shape[0])])
    np.testing.assert_allclose(one_pass, brute, rtol=1e-5)
    assert brute.std(axis=1).min() > 1e-3  # orders genuinely differ
    nll_B = jax.jit(ao_ar.nll, static_argnums=(3,))(params, {"tokens": x}, jax.random.key(0), cfg)
    assert objectives.get("ao_ar").exact
    np.testing.assert_allclose(np.asarray(nll_B), brute[:, 0], rtol=1e-5)  # identity = orders[0]


def test_ao_ar_needs_and_uses_the_target_position(ao_setup):
    cfg, params, x = ao_setup
    pos = jnp.broadcast_to(jnp.arange(4), x.shape)
    a = apply(params, cfg.model, x, pos, "causal", pos)
    b = apply(params, cfg.model, x, pos, "causal", pos.at[:, 2].set(3))
    np.testing.assert_allclose(np.asarray(a[:, :2]), np.asarray(b[:, :2]), atol=1e-6)
    assert not np.allclose(np.asarray(a[:, 2]), np.asarray(b[:, 2]), atol=1e-4)
    plain = init_params(cfg.model, jax.random.key(5), False)
    assert "target_embed" in params and "target_embed" not in plain
    with pytest.raises(ValueError, match="target positions"):
        model.apply(plain, cfg.model, x, pos, "causal", pos)


def test_ao_ar_order_distribution():
    n, B = 6, 4000
    ident = np.arange(n)
    o = np.asarray(ao_ar.sample_orders(jax.random.key(0), B, n, 1.0, 0.0))
    assert np.all(o == ident)
    o = np.asarray(ao_ar.sample_orders(jax.random.key(0), B, n, 0.0, 1.0))
    assert np.all(o == ident[::-1])
    o = np.asarray(ao_ar.sample_orders(jax.random.key(0), B, n, 0.3, 0.2))
    assert np.all(np.sort(o, axis=1) == ident)  # permutations
    is_l2r, is_r2l = np.all(o == ident, 1).mean(), np.all(o == ident[::-1], 1).mean()
    # uniform permutations add 1/720 to each; 4 sigma of a binomial with B = 4000 is ~0.03
    assert abs(is_l2r - 0.3) < 0.03 and abs(is_r2l - 0.2) < 0.03
    first = o[np.any(o != ident, 1) & np.any(o != ident[::-1], 1), 0]
    np.testing.assert_allclose(np.bincount(first, minlength=n) / len(first), 1 / n, atol=0.03)


# ---------------------------------------------------------------------------------- latent_order

@pytest.fixture(scope="module")
def latent_setup():
    """n = 3, all 3! = 6 orders, their exact per-order log-likelihoods l_BK [B, 6] (one-pass, float64)."""
    n = 3
    cfg = tiny_cfg(n, **{"objective.name": "latent_order", "objective.num_orders": 6})
    params = init_params(cfg.model, jax.random.key(9), True)
    x = jnp.asarray([[2, 0, 3], [1, 1, 0], [3, 2, 2]], jnp.int32)
    orders = np.array(list(itertools.permutations(range(n))))
    l_BK = -_brute_force_order_nll(params, cfg, x, orders)
    return cfg, params, x, orders, l_BK


def _lme(a, axis=-1):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).mean(axis, keepdims=True))).squeeze(axis)


def test_latent_order_bound_over_all_orders_is_log_mean_exp(latent_setup):
    """K = n! covering all orders: the objective's bound equals -log (1/n!) sum_sigma p(x | sigma),
    i.e. the exact NLL of the uniform order mixture, and is <= the sum-of-logs average (strictly
    here, since the orders disagree)."""
    cfg, params, x, orders, l_BK = latent_setup
    orders_BKL = jnp.tile(jnp.asarray(orders)[None], (x.shape[0], 1, 1))
    bound, l_obj = orders_nll(params, x, orders_BKL, cfg)
    np.testing.assert_allclose(np.asarray(l_obj), l_BK, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bound), -_lme(l_BK), rtol=1e-5)
    avg_nll = -l_BK.mean(axis=1)
    assert np.all(np.asarray(bound) < avg_nll - 1e-4)


def test_latent_order_bound_tightens_weakly_with_k(latent_setup):
    """For every K, the exact expectation over all K-subsets (without replacement) of the n! orders
    of the objective's bound, each subset scored by one call with explicit orders. Nested-subset
    Jensen argument: E_K <= E_{K-1}. E_1 is the sum-of-logs average, E_{n!} the log-mean-exp over
    all orders; every single subset's bound is <= its own sum-of-logs average."""
    cfg, params, x, orders, l_BK = latent_setup
    n_orders = len(orders)
    expected = []
    for k in range(1, n_orders + 1):
        subsets = np.array(list(itertools.combinations(range(n_orders), k)))  # [S, k]
        S = len(subsets)
        tokens = jnp.repeat(x, S, axis=0)  # row b*S + s
        orders_BKL = jnp.asarray(np.tile(orders[subsets], (x.shape[0], 1, 1)))
        bound, _ = orders_nll(params, tokens, orders_BKL, cfg)
        bound = np.asarray(bound).reshape(x.shape[0], S)
        avg = -l_BK[:, subsets].mean(axis=2)  # [B, S]
        assert np.all(bound <= avg + 1e-5)
        expected.append(bound.mean(axis=1))
    expected = np.array(expected)  # [K, B]
    assert np.all(np.diff(expected, axis=0) <= 1e-5), expected
    assert np.all(expected[0] - expected[-1] > 1e-3)
    np.testing.assert_allclose(expected[0], -l_BK.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(expected[-1], -_lme(l_BK), rtol=1e-5)


def test_latent_order_candidates_and_posterior_weights(latent_setup):
    cfg, params, x, orders, l_BK = latent_setup
    o = np.asarray(latent_order.candidate_orders(jax.random.key(0), 5, 7, 4, True))
    assert o.shape == (5, 4, 7)
    assert np.all(o[:, 0] == np.arange(7)) and np.all(o[:, 1] == np.arange(7)[::-1])
    assert np.all(np.sort(o, axis=2) == np.arange(7))
    assert latent_order.candidate_orders(jax.random.key(0), 5, 7, 3, False).shape == (5, 3, 7)
    cfg4 = config_lib.from_dict({**config_lib.to_dict(cfg),
                                 "objective": {"name": "latent_order", "num_orders": 4}})
    value, m = jax.jit(latent_order.loss, static_argnums=(3,))(params, {"tokens": x}, jax.random.key(1), cfg4)
    np.testing.assert_allclose(float(m["w_l2r"] + m["w_r2l"] + 2 * m["w_random"]), 1.0, rtol=1e-5)
    assert float(value) <= float(m["nll_per_token_avg_order"]) + 1e-6
    # the l2r/r2l weights are the posterior of candidates 0/1, computed from exact order likelihoods
    l_fixed = np.stack([l_BK[:, 0], l_BK[:, -1]], 1)  # orders[0] = identity, orders[-1] = reversal
    assert np.all(np.isfinite(l_fixed))
    nll_B = jax.jit(lambda p, t, r: latent_order.nll(p, {"tokens": t}, r, cfg4))(params, x, jax.random.key(2))
    assert not objectives.get("latent_order").exact and nll_B.shape == (3,)


# ------------------------------------------------------------------------------ every objective

NEW_OBJECTIVES = ["bd3", "ao_ar", "latent_order", "ilm", "learned_order"]


@pytest.mark.parametrize("name", NEW_OBJECTIVES)
def test_registry_interface_and_training(name):
    """objectives.get works; train.init_state builds the right model (target-position table only for
    ao_ar / latent_order); nll has the interface; a few jitted train steps on a fixed, learnable
    batch give a finite loss that falls by > 30%."""
    module = objectives.get(name)
    assert callable(module.loss) and callable(module.nll) and isinstance(module.exact, bool)
    cfg = tiny_cfg(8, **{"objective.name": name, "optimizer.lr": 1e-2, "optimizer.warmup_steps": 0,
                         "train.steps": 25})
    optimizer = make_optimizer(cfg)
    state = init_state(cfg, optimizer)
    assert ("target_embed" in state["params"]) == module.target_positions
    tokens = jnp.tile(jnp.arange(8, dtype=jnp.int32) % SYMBOLS, (8, 1))  # a fixed, learnable batch
    nll_fn = jax.jit(lambda p, t, r: module.nll(p, {"tokens": t}, r, cfg))
    nll_B = np.asarray(nll_fn(state["params"], tokens, jax.random.key(1)))
    assert nll_B.shape == (8,) and np.all(np.isfinite(nll_B))
    step = jax.jit(make_train_step(cfg, optimizer))
    losses = []
    for _ in range(25):
        state, metrics = step(state, tokens)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
