"""bd3 (block diffusion) against brute-force enumeration and against mdm / l2r on a tiny vocabulary;
the tiny set-up is that of test_order_objectives.py (4 symbols + 4 specials, random parameters)."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_order_objectives import SYMBOLS, VOCAB, apply, init_params, subs_log_softmax_np, tiny_cfg

from jaxorder import model, objectives
from jaxorder.model.attention import attention_mask
from jaxorder.objectives import bd3, mdm
from jaxorder.objectives.common import special_ids

bd3_masked_token_nll = jax.jit(bd3.masked_token_nll, static_argnums=(4, 5))
bd3_elbo_from = jax.jit(bd3.elbo_from, static_argnums=(5, 6))
bd3_noisy_logits = jax.jit(bd3.noisy_logits, static_argnums=(3, 4))
mdm_masked_token_nll = jax.jit(mdm.masked_token_nll, static_argnums=(4,))


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
