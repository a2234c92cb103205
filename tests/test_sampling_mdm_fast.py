"""Fast masked-diffusion decoding: threshold and factor commits, approximate KV caches, Prophet.

Each is checked against a plain reference: a hand-written decoding loop over full forward passes
(threshold, factor, Prophet), the uncached sampler (every cache mode refreshed every step), and the
model's bidirectional pass (`decode.rewrite_positions`). The tiny random model's head is scaled
so its distributions are peaked (random weights alone give confidences of ~1/256 everywhere).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.model import decode
from jaxorder.model.chunk_attention import ChunkLayout, ChunkSelect, select_chunks
from jaxorder.objectives.common import special_ids
from jaxorder.objectives.mdm import masked_log_probs
from jaxorder.sampling import SamplerOptions, sample
from jaxorder.sampling.mdm_steps import commit_step, factor_count

TINY_MDM = ("objective.name=mdm", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.seq_len=32")
B, L, PROMPT, BLOCK = 2, 28, 4, 8


@pytest.fixture(scope="module")
def peaked():
    cfg = config_lib.load(None, TINY_MDM)
    params = model.init_params(cfg.model, jax.random.key(0))
    return cfg, dict(params, head=params["head"] * 30.0)


def _prompted(cfg) -> np.ndarray:
    rows = np.full((B, L), special_ids(cfg.model).mask, np.int32)
    rows[:, :PROMPT] = np.array([[84, 104, 101, 32], [65, 32, 99, 97]])
    return rows


def _sample(cfg, params, rows, name, **options):
    return jax.device_get(sample(params, cfg, rows, jax.random.key(3), name, SamplerOptions(**options)))


def _reference_parallel(cfg, params, rows, pick) -> tuple[np.ndarray, list[np.ndarray]]:
    """Greedy (temperature 0) semi-AR decoding with full passes: each step commits the positions
    `pick(confidence of the block's masked positions [n]) -> bool [n]` chooses. Returns the tokens and
    the commits per step, for row-by-row comparison."""
    mask_id = special_ids(cfg.model).mask
    x = rows.copy()
    commits = []
    logp_fn = jax.jit(lambda x: masked_log_probs(params, x, cfg))
    for s in range(PROMPT, L, BLOCK):
        while (x[:, s:s + BLOCK] == mask_id).any():
            logp = np.asarray(logp_fn(jnp.asarray(x)))
            tok, conf = logp.argmax(-1), np.exp(logp.max(-1))
            step = np.zeros(B, int)
            for b in range(B):
                idx = [i for i in range(s, min(s + BLOCK, L)) if x[b, i] == mask_id]
                if not idx:
                    continue
                chosen = np.asarray(idx)[pick(conf[b, idx])]
                x[b, chosen] = tok[b, chosen]
                step[b] = len(chosen)
            commits.append(step)
    return x, commits


def _threshold_pick(tau):
    def pick(conf):
        keep = conf >= tau
        keep[np.argmax(conf)] = True  # at least one per step: the most confident
        return keep
    return pick


def _factor_pick(f):
    def pick(conf):
        order = np.argsort(-conf, kind="stable")
        n = 0
        while n < len(conf) and (n + 2) * (1 - conf[order[n]]) < f:
            n += 1
        keep = np.zeros(len(conf), bool)
        keep[order[:max(n, 1)]] = True
        return keep
    return pick


# ----------------------------------------------------------------------------- commit rules

def test_threshold_step_commits_exactly_those_above_tau_plus_the_forced_one():
    logp = jnp.log(jnp.array([[[0.95, 0.05], [0.6, 0.4], [0.91, 0.09], [0.99, 0.01]],
                              [[0.5, 0.5], [0.7, 0.3], [0.8, 0.2], [0.6, 0.4]]]))
    eligible = jnp.array([[True, True, True, False], [True, True, True, True]])
    opts = SamplerOptions(temperature=0.0)
    _, commit, _ = commit_step(logp, eligible, jax.random.key(0), 5, "threshold", opts, 0.9)
    # row 0: 0.95 and 0.91 pass (0.99 is not eligible); row 1: none passes -> the best one (0.8)
    assert np.asarray(commit).tolist() == [[True, False, True, False], [False, False, True, False]]
    _, last, _ = commit_step(logp, eligible, jax.random.key(0), 1, "threshold", opts, 0.9)
    assert np.array_equal(np.asarray(last), np.asarray(eligible)), "the last step commits all that is left"


def test_factor_count_matches_brute_force():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, (64, 10)).astype(np.float32)
    eligible = rng.uniform(size=(64, 10)) < 0.7
    for f in (0.3, 1.0, 2.5):
        got = np.asarray(factor_count(jnp.asarray(conf), jnp.asarray(eligible), f))
        for b in range(64):
            p = np.sort(conf[b][eligible[b]])[::-1]
            want = max([n for n in range(len(p) + 1) if all((m + 1) * (1 - p[m - 1]) < f
                                                             for m in range(1, n + 1))])
            assert got[b] == want, (f, b)


@pytest.mark.parametrize("name, tau_or_f", [("threshold", 0.6), ("factor", 1.0)])
def test_parallel_rules_equal_a_plain_decoding_loop(peaked, name, tau_or_f):
    """Steps >= length (the budget never binds): the sampler commits exactly what the reference
    loop over full passes commits, step by step, and produces its tokens."""
    cfg, params = peaked
    rows = _prompted(cfg)
    opt = {"threshold": tau_or_f} if name == "threshold" else {"factor": tau_or_f}
    out = _sample(cfg, params, rows, name, steps=L, temperature=0.0, block_length=BLOCK, **opt)
    pick = _threshold_pick(tau_or_f) if name == "threshold" else _factor_pick(tau_or_f)
    ref_x, ref_commits = _reference_parallel(cfg, params, rows, pick)
    assert np.array_equal(out["tokens"], ref_x)
    steps = int(out["steps"])
    assert steps == len(ref_commits) == int(out["nfe"]) < L - PROMPT, "no parallel commits happened"
    assert np.array_equal(out["commits"][:steps], np.stack(ref_commits))


def test_threshold_budget_is_an_upper_bound(peaked):
    cfg, params = peaked
    rows = _prompted(cfg)
    out = _sample(cfg, params, rows, "threshold", steps=3, temperature=0.0, threshold=0.999999)
    assert int(out["steps"]) == 3 and np.all(out["complete"])
    assert np.all(out["commits"][:2] == 1) and np.all(out["commits"][2] == L - PROMPT - 2)


# ----------------------------------------------------------------------------- approximate caches

def test_rewrite_positions_is_the_bidirectional_pass_and_reads_stale_slots(peaked):
    cfg, params = peaked
    mcfg = cfg.model
    x = jnp.asarray(_prompted(cfg))
    full = model.apply(params, mcfg, x, jnp.broadcast_to(jnp.arange(L), (B, L)), "bidirectional")
    logits, cache = decode.rewrite_positions(params, mcfg, decode.init_cache(mcfg, B, L), x, 0)
    np.testing.assert_allclose(logits, full, atol=2e-4, rtol=1e-4)
    # a window over a cache of the same tokens: every slot is fresh, so it is exact
    window, _ = decode.rewrite_positions(params, mcfg, cache, x[:, 8:16], 8)
    np.testing.assert_allclose(window, full[:, 8:16], atol=2e-4, rtol=1e-4)
    # change a token outside the window: the window still reads its old keys/values (approximate)
    x2 = x.at[:, 20].set(101)
    stale, _ = decode.rewrite_positions(params, mcfg, cache, x2[:, 8:16], 8)
    np.testing.assert_allclose(stale, window, atol=1e-6)
    fresh = model.apply(params, mcfg, x2, jnp.broadcast_to(jnp.arange(L), (B, L)), "bidirectional")
    assert float(jnp.max(jnp.abs(fresh[:, 8:16] - stale))) > 1e-3


@pytest.mark.parametrize("mode, name, fixed_noise", [
    ("prefix", "threshold", False), ("dual", "confidence", False), ("free", "threshold", False),
    ("dual", "confidence", True)])
def test_cache_refreshed_every_step_equals_the_uncached_sampler(peaked, mode, name, fixed_noise):
    cfg, params = peaked
    rows = _prompted(cfg)
    opts = dict(steps=12, temperature=1.0, block_length=BLOCK, fixed_noise=fixed_noise,
                **({"threshold": 0.6} if name == "threshold" else {}))
    base = _sample(cfg, params, rows, name, **opts)
    out = _sample(cfg, params, rows, name, approx_cache=mode, cache_refresh=1, **opts)
    assert np.array_equal(out["tokens"], base["tokens"]) and np.array_equal(out["commits"], base["commits"])
    np.testing.assert_allclose(out["logprob"], base["logprob"], rtol=1e-4, atol=1e-3)
    assert int(out["nfe"]) == int(base["nfe"]) and int(out["rows"]) == int(base["rows"])


@pytest.mark.parametrize("mode", ["prefix", "dual", "free"])
def test_every_cache_mode_is_exact_for_a_one_layer_model(mode):
    """With one layer, a position's keys/values depend on its own token only, so a cache is stale
    only where tokens changed since it was written. Every mode recomputes those positions (the
    block; free: the previous block at the next block's start), so each equals the uncached
    sampler: wrong windows, positions or a missed catch-up break this."""
    cfg = config_lib.load(None, (*TINY_MDM, "model.n_layers=1"))
    params = model.init_params(cfg.model, jax.random.key(1))
    params = dict(params, head=params["head"] * 30.0)
    rows = _prompted(cfg)
    opts = dict(steps=12, temperature=1.0, block_length=BLOCK)
    base = _sample(cfg, params, rows, "confidence", **opts)
    out = _sample(cfg, params, rows, "confidence", approx_cache=mode, **opts)
    assert np.array_equal(out["tokens"], base["tokens"])
    np.testing.assert_allclose(out["logprob"], base["logprob"], rtol=1e-4, atol=1e-3)
    assert int(out["rows"]) < int(base["rows"])


@pytest.mark.parametrize("mode", ["prefix", "dual", "free"])
def test_cache_modes_recompute_only_their_windows(peaked, mode):
    """One token per step (steps = positions), 3 blocks of 8 after a 4-token prompt: the positions
    each mode runs through the model, counted by hand."""
    cfg, params = peaked
    rows = _prompted(cfg)
    n_steps = L - PROMPT
    out = _sample(cfg, params, rows, "confidence", steps=n_steps, temperature=1.0, block_length=BLOCK,
                  approx_cache=mode)
    starts = range(PROMPT, L, BLOCK)
    rows_run = {
        "prefix": sum(L + (BLOCK - 1) * (L - s) for s in starts),  # a full pass, then [s, L)
        "dual": len(starts) * (L + (BLOCK - 1) * BLOCK),  # a full pass, then the block
        # free: a block's first pass also runs the previous block (its committed tokens)
        "free": L + (BLOCK - 1) * BLOCK + 2 * (2 * BLOCK + (BLOCK - 1) * BLOCK),
    }[mode]
    assert int(out["rows"]) == rows_run and int(out["nfe"]) == n_steps
    assert np.all(out["complete"]) and np.array_equal(out["tokens"][:, :PROMPT], rows[:, :PROMPT])
    assert np.all(out["commits"][:n_steps] == 1)
    assert np.all(np.isfinite(out["logprob"]))


# ----------------------------------------------------------------------------- Prophet

@pytest.mark.parametrize("name", ["confidence", "threshold"])
def test_prophet_with_an_infinite_gap_is_its_base_rule(peaked, name):
    cfg, params = peaked
    rows = _prompted(cfg)
    opts = dict(steps=L - PROMPT, temperature=1.0, block_length=BLOCK)
    base = _sample(cfg, params, rows, name, **opts)
    out = _sample(cfg, params, rows, name, prophet=float("inf"), **opts)
    for k in ("tokens", "commits", "logprob", "nfe", "steps"):
        assert np.array_equal(out[k], base[k]), k
    assert np.all(out["early"] == 0)


def test_prophet_commits_the_block_at_the_argmax_once_the_gap_is_large(peaked):
    """A gap threshold every block passes at its first step: one pass per block, whose argmax fills
    the block (the greedy reference: the first pass of each block decides it all)."""
    cfg, params = peaked
    rows = _prompted(cfg)
    out = _sample(cfg, params, rows, "confidence", steps=L - PROMPT, temperature=0.0, block_length=BLOCK,
                  prophet=1e-6)
    ref, _ = _reference_parallel(cfg, params, rows, lambda conf: np.ones(len(conf), bool))
    assert np.array_equal(out["tokens"], ref)
    assert int(out["nfe"]) == 3 and np.all(out["early"] == 3 * (BLOCK - 1))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, options, message", [
    ("confidence", dict(fused=True, prophet=5.0), "--prophet needs the model's log-probs"),
    ("confidence", dict(fused=True, approx_cache="dual"), "--approx-cache needs the model's log-probs"),
    ("ancestral", dict(approx_cache="prefix"), "the ancestral sampler already reuses passes"),
    ("confidence", dict(cache_refresh=2), "give --approx-cache prefix|dual|free|chunked too"),
    ("confidence", dict(chunks=2), "give --approx-cache chunked too"),
    ("confidence", dict(approx_cache="chunked", chunk_length=0), "chunk_length and chunks must be >= 1"),
    ("factor", dict(factor=0.0), "factor must be a finite number > 0"),
    ("confidence", dict(approx_cache="triple"), "approx_cache must be one of none, prefix, dual, free"),
    ("confidence", dict(prophet=-1.0), "prophet must be >= 0"),
    ("ancestral", dict(fixed_noise=True), "the ancestral sampler draws each token once already"),
    ("confidence", dict(factor=2.0), "the confidence sampler does not take 'factor'"),
])
def test_bad_fast_decoding_options_are_one_line_errors(peaked, name, options, message):
    cfg, params = peaked
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        sample(params, cfg, _prompted(cfg), jax.random.key(0), name, SamplerOptions(**options))


def test_block_and_ar_runs_refuse_the_masked_only_options():
    cfg = config_lib.load(None, (*TINY_MDM[1:], "objective.name=bd3", "objective.block_size=4"))
    params = model.init_params(cfg.model, jax.random.key(0))
    rows = np.full((1, 8), special_ids(cfg.model).mask)
    with pytest.raises(ConfigError, match="does not take 'approx_cache'"):
        sample(params, cfg, rows, jax.random.key(0), "confidence", SamplerOptions(approx_cache="dual"))
    ar = dataclasses.replace(cfg, objective=config_lib.load(None, ("objective.name=l2r",)).objective)
    with pytest.raises(ConfigError, match="the ar sampler does not take 'prophet'"):
        sample(params, ar, rows, jax.random.key(0), None, SamplerOptions(prophet=5.0))


# ----------------------------------------------------------------------------- chunked prompt cache

CHUNK, CP, CL = 8, 24, 40  # chunk length, prompt length (3 chunks), total length


def _long_prompted(cfg) -> np.ndarray:
    rows = np.full((B, CL), special_ids(cfg.model).mask, np.int32)
    rows[:, :CP] = np.random.default_rng(5).integers(32, 120, (B, CP))
    return rows


def _reference_chunked_logits(params, cfg, prompt_BP, gen_BG) -> jnp.ndarray:
    """Logits of the generated positions with every prompt chunk attended, from the plain decode
    path: each chunk [BOS, tokens] encoded on its own ("bidirectional" in a fresh cache of its own
    length, tokens at their sequence positions, BOS at the chunk's first one), the chunks'
    keys/values laid side by side, then the generated positions in one "all" pass over them."""
    mcfg = cfg.model
    bos = special_ids(mcfg).bos
    P, G = prompt_BP.shape[1], gen_BG.shape[1]
    caches = []
    for s in range(0, P, CHUNK):
        n = min(CHUNK, P - s)
        tokens = jnp.concatenate([jnp.full((B, 1), bos), prompt_BP[:, s:s + n]], axis=1)
        positions = jnp.broadcast_to(jnp.asarray([s, *range(s, s + n)]), (B, n + 1))
        caches.append(decode.decode_step(params, mcfg, decode.init_cache(mcfg, B, n + 1), tokens,
                                         positions, "bidirectional")[1])
    slots = sum(c["layer_0"]["attn"]["cached_key"].shape[2] for c in caches)  # [B, H, slots, D]
    cache = decode.init_cache(mcfg, B, slots + G)
    for layer in cache:
        for name in ("cached_key", "cached_value"):
            side = jnp.concatenate([c[layer]["attn"][name] for c in caches], axis=2)
            cache[layer]["attn"][name] = cache[layer]["attn"][name].at[:, :, :slots].set(side)
        cache[layer]["attn"]["cache_index"] = jnp.asarray(slots, jnp.int32)
    positions = jnp.broadcast_to(P + jnp.arange(G), (B, G))
    return decode.decode_step(params, mcfg, cache, gen_BG, positions, "all")[0]


def test_chunked_cache_with_a_padded_last_chunk_ignores_the_padding(peaked):
    """A 21-token prompt in chunks of 8: the last chunk holds 5 tokens and 3 padding slots, which
    neither its own tokens nor the generated positions may see."""
    cfg, params = peaked
    rows = _long_prompted(cfg)
    P, G = 21, 16
    prompt, gen = jnp.asarray(rows[:, :P]), jnp.asarray(rows[:, CP:CP + G])
    layout = ChunkLayout(P, CHUNK)
    cache = decode.prefill_chunks(params, cfg.model, decode.init_cache(cfg.model, B, layout.prompt_slots + G),
                                  prompt, layout, special_ids(cfg.model).bos)
    got, _ = decode.rewrite_positions(params, cfg.model, cache, gen, P, slot=layout.prompt_slots,
                                      new_mask=ChunkSelect(layout, 2, 0, G))
    np.testing.assert_allclose(got, _reference_chunked_logits(params, cfg, prompt, gen), atol=2e-4, rtol=1e-4)


def test_chunked_cache_refreshed_every_step_equals_a_plain_loop_over_reference_passes(peaked):
    """All chunks attended (chunks >= N - 1) and a pass over [P, L) every step: each step's logits are
    the reference's, so greedy one-token-per-step decoding matches a plain loop token for token."""
    cfg, params = peaked
    rows = _long_prompted(cfg)
    mask_id = special_ids(cfg.model).mask
    out = _sample(cfg, params, rows, "confidence", steps=CL - CP, temperature=0.0, block_length=BLOCK,
                  approx_cache="chunked", chunk_length=CHUNK, chunks=2, cache_refresh=1)
    x = rows.copy()
    ref_fn = jax.jit(lambda g: _reference_chunked_logits(params, cfg, jnp.asarray(rows[:, :CP]), g))
    for s in range(CP, CL, BLOCK):
        while (x[:, s:s + BLOCK] == mask_id).any():
            logits = np.asarray(ref_fn(jnp.asarray(x[:, CP:])), np.float64)[:, s - CP:s - CP + BLOCK]
            logits[..., mask_id] = -np.inf
            conf = np.exp(logits.max(-1) - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
                          - logits.max(-1))
            for b in range(B):
                open_ = np.flatnonzero(x[b, s:s + BLOCK] == mask_id)
                i = open_[np.argmax(conf[b, open_])]
                x[b, s + i] = logits[b, i].argmax()
    assert np.array_equal(out["tokens"], x)
    assert int(out["rows"]) == 3 * (CHUNK + 1) + (CL - CP) * (CL - CP)  # prefill, then [P, L) each step


def test_chunk_selection_is_the_top_k_by_mean_query_key_score_plus_the_last_chunk():
    layout = ChunkLayout(prompt_length=21, chunk_length=4)  # 6 chunks, the last one with 1 token
    rng = np.random.default_rng(0)
    Bq, Lq, H, D = 3, 5, 2, 4
    q = rng.normal(size=(Bq, Lq, H, D)).astype(np.float32)
    kp = rng.normal(size=(Bq, layout.n_chunks, layout.chunk_slots, H, D)).astype(np.float32)
    for top_k in (1, 2, 5):
        spec = ChunkSelect(layout, top_k, 1, 4)
        got = np.asarray(select_chunks(jnp.asarray(q), jnp.asarray(kp), spec))
        for b in range(Bq):
            score = []
            for n in range(layout.n_chunks):  # mean over heads, queries 1..3 and the chunk's real tokens
                keys = range(1, layout.valid()[n])
                score.append(np.mean([q[b, i, h] @ kp[b, n, c, h] for h in range(H) for i in range(1, 4)
                                      for c in keys]))
            want = {layout.n_chunks - 1, *np.argsort(score[:-1])[::-1][:top_k].tolist()}
            assert set(got[b].tolist()) == want, (top_k, b)


def test_chunked_cache_runs_its_windows_and_needs_a_prompt(peaked):
    cfg, params = peaked
    rows = _long_prompted(cfg)
    G = CL - CP
    out = _sample(cfg, params, rows, "confidence", steps=G, temperature=1.0, block_length=BLOCK,
                  approx_cache="chunked", chunk_length=CHUNK, chunks=1)
    starts = range(CP, CL, BLOCK)
    assert int(out["rows"]) == 3 * (CHUNK + 1) + sum(G + (BLOCK - 1) * (CL - s) for s in starts)
    assert np.all(out["complete"]) and np.array_equal(out["tokens"][:, :CP], rows[:, :CP])
    all_chunks = _sample(cfg, params, rows, "confidence", steps=G, temperature=1.0, block_length=BLOCK,
                         approx_cache="chunked", chunk_length=CHUNK, chunks=2)
    assert not np.array_equal(out["tokens"], all_chunks["tokens"]), "one chunk of two dropped: same text"
    with pytest.raises(ConfigError, match="--approx-cache chunked caches a prompt"):
        _sample(cfg, params, np.full((B, CL), special_ids(cfg.model).mask), "confidence", steps=G,
                approx_cache="chunked")
