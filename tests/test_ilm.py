"""The insertion language model (objectives/ilm.py, sampling/ilm.py) against plain references.

Vocabulary: 4 symbols + PAD, MASK, BOS, EOS; windows of 3-8 tokens; random (untrained) parameters
unless a test sets the heads by hand. References build every state unpadded (no PAD, no key mask),
so they also catch padding that leaks into the real slots.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.objectives import ilm
from jaxorder.objectives.common import special_ids

SYMBOLS = 4
VOCAB = SYMBOLS + 4
PAD, MASK, BOS, EOS = 4, 5, 6, 7
ALLOWED = [0, 1, 2, 3, EOS]  # what the token head may insert


def tiny_cfg(n: int = 6, max_gap: int = 3, **over) -> config_lib.Config:
    ov = ([f"model.vocab_size={VOCAB}", "model.d_model=16", "model.n_layers=2", "model.n_heads=2",
           "model.max_len=16", f"data.seq_len={n}", "data.batch_size=8", "objective.name=ilm",
           f"objective.ilm_max_gap={max_gap}"] + [f"{k}={v}" for k, v in over.items()])
    return config_lib.load(None, ov)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_cfg()
    params = model.init_params(cfg.model, jax.random.key(0), length_classes=ilm.length_classes(cfg))
    return cfg, params


_apply = jax.jit(model.apply_insertion, static_argnums=(1,))


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def state_log_probs(params, cfg, y):
    """Unpadded reference of one state y (a tuple): (log P_g(c) [m+1, C], log q_g(v) [m+1, V]) in float64."""
    inputs = jnp.asarray([[BOS, *y]], jnp.int32)
    positions = jnp.arange(len(y) + 1, dtype=jnp.int32)[None]
    logits, length = _apply(params, cfg.model, inputs, positions, jnp.ones_like(inputs, bool))
    logits = np.asarray(logits[0], np.float64)
    logits[:, [PAD, MASK, BOS]] = -np.inf
    lp = np.asarray(length[0], np.float64)
    return log_softmax_np(lp), log_softmax_np(logits)


def step_probs(params, cfg, y):
    """(s, p[g, v]) of the insertion process at state y, written out plainly."""
    logP, logq = state_log_probs(params, cfg, y)
    P0 = np.exp(logP[:, 0])
    s = np.prod(P0)
    w = 1.0 - P0
    return s, (1.0 - s) * (w / w.sum())[:, None] * np.exp(logq)


# --------------------------------------------------------------------------------------- training

def test_gap_targets_hand_built():
    """Window 0 1 2 3 0 1 2 3, kept positions 0, 3, 4, 6: gaps and first dropped tokens by hand."""
    x = jnp.asarray([[0, 1, 2, 3, 0, 1, 2, 3]], jnp.int32)
    keep = jnp.asarray([[True, False, False, True, True, False, False, False]])
    inputs, valid, _ = ilm.compact(x, keep, PAD, BOS)
    np.testing.assert_array_equal(inputs[0], [BOS, 0, 3, 0, PAD, PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(valid[0], [1, 1, 1, 1, 0, 0, 0, 0, 0])
    count, cls, first = ilm.gap_targets(x, keep, 2, PAD)
    # gap 0: before x0 (none); gap 1: x1 x2; gap 2: none; gap 3: after x4: x5 x6 x7 (clipped to 2)
    np.testing.assert_array_equal(count[0], [0, 2, 0, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(cls[0], [0, 2, 0, 2, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(first[0], [PAD, 1, PAD, 1, PAD, PAD, PAD, PAD, PAD])
    # the leading gap: everything before the first kept token
    keep0 = jnp.asarray([[False, False, True, True, True, True, True, True]])
    count0, _, first0 = ilm.gap_targets(x, keep0, 5, PAD)
    assert int(count0[0, 0]) == 2 and int(first0[0, 0]) == 0 and int(count0[0].sum()) == 2


def test_loss_equals_plain_reference(setup):
    """denoising_loss = the CE terms computed state by state from unpadded passes (catches padding that
    leaks, a wrong gap, a wrong clip, a wrong first token)."""
    cfg, params = setup
    rng = np.random.default_rng(0)
    x = rng.integers(0, SYMBOLS, (4, 6)).astype(np.int32)
    keep = rng.random((4, 6)) < 0.5
    keep[1] = False  # everything dropped: one gap of 6, clipped to 3
    keep[2] = True  # nothing dropped: only the length terms
    len_B, tok_B = jax.jit(ilm.denoising_loss, static_argnums=(3,))(params, jnp.asarray(x), jnp.asarray(keep),
                                                                     cfg)
    max_gap = cfg.objective.ilm_max_gap
    for b in range(4):
        y = tuple(int(t) for t, k in zip(x[b], keep[b]) if k)
        logP, logq = state_log_probs(params, cfg, y)
        gaps = [[] for _ in range(len(y) + 1)]
        g = 0
        for t, k in zip(x[b], keep[b]):
            if k:
                g += 1
            else:
                gaps[g].append(int(t))
        ref_len = -sum(logP[g, min(len(d), max_gap)] for g, d in enumerate(gaps))
        ref_tok = -sum(logq[g, d[0]] for g, d in enumerate(gaps) if d)
        np.testing.assert_allclose(float(len_B[b]), ref_len, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(tok_B[b]), ref_tok, rtol=1e-5, atol=1e-5)


def test_drop_count_uniform_and_subset_uniform():
    """k ~ U{0..n}, and given k a uniform subset (chi-square on n = 3: 8 subsets)."""
    n, draws = 3, 8000
    keep = np.asarray(ilm.drop_mask(jax.random.key(1), draws, n))
    k = n - keep.sum(axis=1)
    counts_k = np.bincount(k, minlength=n + 1)
    expected = draws / (n + 1)
    assert ((counts_k - expected) ** 2 / expected).sum() < 16.3  # chi2(3) at p = 0.001
    for size in (1, 2):  # subsets of one size: C(3, size) = 3 equally likely
        rows = keep[k == size]
        codes = rows @ np.array([1, 2, 4])
        _, c = np.unique(codes, return_counts=True)
        assert len(c) == 3 and ((c - c.mean()) ** 2 / c.mean()).sum() < 13.8  # chi2(2) at p = 0.001


# ------------------------------------------------------------------------------------ likelihood

def test_order_nll_matches_step_by_step_reference(setup):
    """order_nll = -sum log p(gap, token) - log s(x), with each state built and scored unpadded."""
    cfg, params = setup
    rng = np.random.default_rng(2)
    x = rng.integers(0, SYMBOLS, (3, 5)).astype(np.int32)
    orders = np.stack([np.arange(5), np.arange(5)[::-1], rng.permutation(5)]).astype(np.int32)
    got = np.asarray(jax.jit(ilm.order_nll, static_argnums=(3,))(params, jnp.asarray(x), jnp.asarray(orders),
                                                                  cfg))
    for b in range(3):
        present, ref = [], 0.0
        for pos in orders[b]:
            y = tuple(int(x[b, p]) for p in sorted(present))
            _, p = step_probs(params, cfg, y)
            gap = sum(q < pos for q in present)
            ref -= np.log(p[gap, x[b, pos]])
            present.append(pos)
        s, _ = step_probs(params, cfg, tuple(int(t) for t in x[b]))
        np.testing.assert_allclose(got[b], ref - np.log(s), rtol=1e-4)


def test_bound_above_exact_likelihood_by_enumeration():
    """Every order's path NLL >= the exact -log p(x) (all insertion paths summed by dynamic programming
    over the subsequences of x), and the paths of distinct orders add up to at most p(x)."""
    cfg = tiny_cfg(3, max_gap=2)
    params = model.init_params(cfg.model, jax.random.key(4), length_classes=ilm.length_classes(cfg))
    x = (1, 3, 1)
    probs = {}

    def at(y):
        if y not in probs:
            probs[y] = step_probs(params, cfg, y)
        return probs[y]

    def is_subsequence(y):
        it = iter(x)
        return all(t in it for t in y)

    reach = {(): 1.0}
    for length in range(len(x)):
        for y in [y for y in reach if len(y) == length]:
            _, p = at(y)
            for g in range(length + 1):
                for v in ALLOWED:
                    z = y[:g] + (v,) + y[g:]
                    if is_subsequence(z):
                        reach[z] = reach.get(z, 0.0) + reach[y] * p[g, v]
    exact_nll = -np.log(reach[x] * at(x)[0])
    orders = np.array(list(itertools.permutations(range(3))), np.int32)
    windows = jnp.asarray([x] * len(orders), jnp.int32)
    bound = np.asarray(ilm.order_nll(params, windows, jnp.asarray(orders), cfg))
    assert np.all(bound >= exact_nll - 1e-4), (bound, exact_nll)
    assert np.log(np.exp(-bound.astype(np.float64)).sum()) <= -exact_nll + 1e-4
    # the repeated symbol makes several paths per order count towards p(x): the bound is not tight
    assert bound.min() > exact_nll + 1e-3


# -------------------------------------------------------------------------------------- sampler

def forced_params(cfg, stop_everywhere: bool):
    """Layers that pass the embedding through (zero output projections); symbol 0 ('a') has feature 0,
    every other token feature 1. Length head: feature 0 -> count 1, feature 1 -> count 0 (or every
    feature -> count 0); token head: feature 0 -> symbol 3."""
    params = jax.tree.map(np.array, model.init_params(cfg.model, jax.random.key(0),
                                                      length_classes=ilm.length_classes(cfg)))
    for name, layer in params.items():
        if name.startswith("layer_"):
            layer["attn"]["out"][:] = 0.0
            layer["mlp"]["down"][:] = 0.0
    params["embed"][:] = 0.0
    params["embed"][:, 1] = 1.0
    params["embed"][0] = 0.0
    params["embed"][0, 0] = 1.0
    params["length_head"][:] = 0.0
    params["length_head"][1, 0] = 20.0
    params["length_head"][0, 0 if stop_everywhere else 1] = 20.0
    params["head"][:] = 0.0
    params["head"][0, 3] = 20.0
    return params


def test_sampler_all_lengths_zero_returns_prompt():
    cfg = tiny_cfg(6)
    params = forced_params(cfg, stop_everywhere=True)
    row = np.array([[1, 0, MASK, 2, MASK, MASK]], np.int32)
    out = sampling.sample(params, cfg, row, jax.random.key(0), "insert")
    np.testing.assert_array_equal(out["tokens"][0], [1, 0, 2, PAD, PAD, PAD])
    assert bool(out["eos"][0]) and int(out["nfe"]) == 1 and not np.asarray(out["generated"]).any()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_forced_insertion_goes_where_and_what(temperature):
    """Only the gap after 'a' (symbol 0) wants a token, and it is symbol 3: b a [..] b -> b a 3 3 b at
    the cap; the second 3 goes to the gap's left end, right after 'a'. The gap after the last b is open
    but empty; the fixed b a gap is closed even though 'a' precedes it."""
    cfg = tiny_cfg(5)
    params = forced_params(cfg, stop_everywhere=False)
    rows = np.array([[1, 0, MASK, 1, MASK], [0, 1, MASK, 1, MASK]], np.int32)
    out = sampling.sample(params, cfg, rows, jax.random.key(0), "insert",
                          sampling.SamplerOptions(temperature=temperature))
    np.testing.assert_array_equal(out["tokens"][0], [1, 0, 3, 3, 1])
    np.testing.assert_array_equal(out["committed_at"][0], [-1, -1, 1, 0, -1])
    assert not bool(out["eos"][0]) and int(out["length"][0]) == 5
    # row 2: 'a' is first but its gap (between fixed 0 and 1) is closed: nothing is inserted
    np.testing.assert_array_equal(out["tokens"][1], [0, 1, 1, PAD, PAD])
    assert bool(out["eos"][1]) and int(out["nfe"]) == 2


def test_sampler_logprob_is_the_path_likelihood():
    """Unconditional rows that stopped: logprob = -order_nll(tokens, the sampler's insertion order)."""
    cfg = tiny_cfg(8, max_gap=1)  # two length classes: stops are likely at random init
    params = model.init_params(cfg.model, jax.random.key(7), length_classes=ilm.length_classes(cfg))
    out = sampling.sample(params, cfg, np.full((64, 8), MASK, np.int32), jax.random.key(3), "insert",
                          sampling.SamplerOptions(ignore_eos=True))  # the path as drawn, no EOS padding
    stopped = [b for b in range(64) if bool(out["eos"][b]) and int(out["length"][b]) >= 1]
    lengths = sorted({int(out["length"][b]) for b in stopped})
    assert len(stopped) >= 3 and lengths[-1] >= 2
    for m in lengths[:3]:  # one batched call per length (a compile each)
        rows = [b for b in stopped if int(out["length"][b]) == m]
        tokens = np.asarray(out["tokens"])[rows, :m]
        assert np.all(np.isin(tokens, ALLOWED)) and np.all(np.asarray(out["tokens"])[rows, m:] == PAD)
        order = np.argsort(np.asarray(out["committed_at"])[rows, :m], axis=1).astype(np.int32)
        nll = ilm.order_nll(params, jnp.asarray(tokens), jnp.asarray(order), cfg)
        np.testing.assert_allclose(np.asarray(out["logprob"])[rows], -np.asarray(nll), rtol=1e-4, atol=1e-4)


def test_sampler_pads_inserted_text_after_the_first_inserted_eos():
    """The end-of-text rule of every sampler: with the same key (the rule changes only the output), the
    output equals the ignore_eos output with every inserted token after the first inserted EOS set to
    EOS; fixed tokens and padding stay."""
    cfg = tiny_cfg(8, max_gap=1)
    params = model.init_params(cfg.model, jax.random.key(7), length_classes=ilm.length_classes(cfg))
    params = dict(params, head=params["head"].at[:, EOS].set(params["head"][:, 1] + 1.0))  # EOS likely
    rows = np.full((64, 8), MASK, np.int32)
    rows[:, 0] = 2  # a fixed first token that must stay
    key = jax.random.key(3)
    raw = jax.device_get(sampling.sample(params, cfg, rows, key, "insert",
                                         sampling.SamplerOptions(ignore_eos=True)))
    out = jax.device_get(sampling.sample(params, cfg, rows, key, "insert"))
    want = np.array(raw["tokens"])
    gen = np.asarray(raw["generated"])
    hits = 0
    for b in range(len(want)):
        seen = False
        for i in range(want.shape[1]):
            if gen[b, i] and seen:
                hits += int(want[b, i] != EOS)
                want[b, i] = EOS
            seen = seen or (gen[b, i] and want[b, i] == EOS)
    np.testing.assert_array_equal(out["tokens"], want)
    np.testing.assert_array_equal(out["tokens"][:, 0], 2)
    assert hits > 0, "no row had text after an inserted EOS (the test would prove nothing)"


def test_config_errors():
    with pytest.raises(ConfigError, match="max_len"):
        tiny_cfg(16)
    with pytest.raises(ConfigError, match="ilm_max_gap"):
        tiny_cfg(6, max_gap=0)
    cfg = tiny_cfg(6)
    params = model.init_params(cfg.model, jax.random.key(0), length_classes=ilm.length_classes(cfg))
    with pytest.raises(ConfigError, match="max_len"):
        sampling.sample(params, cfg, np.full((1, 16), MASK, np.int32), jax.random.key(0), "insert")
    assert special_ids(cfg.model).pad == PAD


def test_key_mask_and_length_head_through_scanned_and_rematted_layers(setup):
    """The key mask and the length head reach every layer the same way with model.scan_layers and
    model.remat (nn.scan broadcasts the mask), and the padding's content never matters."""
    import dataclasses

    from jaxorder.model.transformer import stack_layers
    cfg, params = setup
    tokens = jnp.asarray([[BOS, 1, 2, 3, PAD, PAD]], jnp.int32)
    positions = jnp.arange(6, dtype=jnp.int32)[None]
    valid = jnp.asarray([[1, 1, 1, 1, 0, 0]], bool)
    ref = model.apply_insertion(params, cfg.model, tokens, positions, valid)
    scanned = dataclasses.replace(cfg.model, scan_layers=True, remat="full")
    got = model.apply_insertion(stack_layers(params, cfg.model.n_layers), scanned, tokens, positions, valid)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)
    other = model.apply_insertion(params, cfg.model, tokens.at[0, 4:].set(0), positions, valid)
    np.testing.assert_allclose(np.asarray(other[1][:, :4]), np.asarray(ref[1][:, :4]), atol=1e-6)
