"""The Info-Gain sampler (jaxorder/sampling/info_gain.py); the cumulative uncertainty every masked
sampler returns is tested in test_sampling_uncertainty.py with this file's tiny model and replay.

A tiny randomly initialised mdm model (d_model 32, 2 layers); its head is scaled up where the test
needs peaked distributions (skipping, distinct costs). The references are plain step-by-step loops
over fresh model calls: one candidate without skipping is the single Gumbel-top-k draw committed;
with C candidates a brute force recomputes every candidate's cost with its own unbatched model call
and commits the argmin; the uncertainty is recomputed by replaying a decode's commits.
"""
from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.objectives import bd3 as bd3_objective
from jaxorder.objectives.common import special_ids, subs_log_probs
from jaxorder.objectives.mdm import masked_log_probs
from jaxorder.sampling import info_gain
from jaxorder.sampling.mdm_steps import block_schedule, draw
from jaxorder.sampling.noise import gumbel_noise

from conftest import cli_in_process, spec, with_options
from conftest import run_sampler as sample

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=32")


def tiny_model():
    cfg = config_lib.load(None, ("objective.name=mdm", *TINY))
    return cfg, model.init_params(cfg.model, jax.random.key(0))


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _sharp(params, scale: float):
    return dict(params, head=params["head"] * scale)


def _rows(cfg, B: int, L: int, fixed: dict) -> np.ndarray:
    rows = np.full((B, L), special_ids(cfg.model).mask, np.int32)
    for pos, tok in fixed.items():
        rows[:, pos] = tok
    return rows


def _entropy(logp) -> np.ndarray:
    logp = np.asarray(logp, np.float64)
    p = np.exp(logp)
    return -np.sum(np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0), axis=-1)


def _top_k(score_L: np.ndarray, allowed_L: np.ndarray, k: int) -> np.ndarray:
    """The k highest scores among `allowed` (ties: lower position), as a mask."""
    s = np.where(allowed_L, score_L, -np.inf)
    out = np.zeros_like(allowed_L)
    out[np.argsort(-s, kind="stable")[:k]] = True
    return out & allowed_L


def _candidate_noise(step_key, c: int, shape, opts) -> np.ndarray:
    key = jax.random.fold_in(jax.random.fold_in(step_key, info_gain.CANDIDATE_NOISE), c)
    return np.asarray(gumbel_noise(key, shape, opts.noise))


def reference(params, cfg, tokens, key, opts, lookahead_costs: bool = True, margins: list | None = None):
    """A plain Info-Gain decode (module docstring of info_gain), row by row and candidate by
    candidate: fresh log-probs each step, one unbatched model call per candidate look-ahead. With
    ``lookahead_costs`` False it commits candidate 0 without evaluating anything (the C = 1 case).
    ``margins`` collects, per choice, the cost gap to the best candidate with another action."""
    mask_id = special_ids(cfg.model).mask
    x = np.array(tokens, np.int32)
    B, L = x.shape
    masked = x == mask_id
    block_np, budget_np = block_schedule(L, opts.steps, opts.block_length, int(np.argmax(masked.any(0))))
    committed_at = np.full((B, L), -1, np.int32)
    logprob, uncertainty, skipped = np.zeros(B), np.zeros(B), 0
    lookahead = jax.jit(lambda p, t: masked_log_probs(p, t, cfg))
    i = 0
    for blk, budget in enumerate(budget_np):
        for j in range(int(budget)):
            eligible = masked & (block_np == blk)[None]
            if not eligible.any():
                break
            step_key = jax.random.fold_in(key, i)
            logp = np.asarray(lookahead(params, jnp.asarray(x)))
            tok = np.asarray(draw(jnp.asarray(logp), step_key, opts))
            lp_tok = np.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]
            ent = _entropy(logp)
            score = lp_tok * np.float32(1.0 / opts.position_temperature)
            noise = [_candidate_noise(step_key, c, (B, L), opts) for c in range(opts.candidates)]
            for b in range(B):
                k = -(-int(eligible[b].sum()) // (int(budget) - j))
                skip = np.zeros(L, bool)
                if opts.skip_confidence > 0:
                    top1 = np.exp(logp[b].max(-1))
                    skip = _top_k(top1, eligible[b] & (top1 >= opts.skip_confidence), k)
                rest, k_rest, skipped = eligible[b] & ~skip, k - int(skip.sum()), skipped + int(skip.sum())
                cands = [skip | _top_k(score[b] + noise[c][b], rest, k_rest) for c in range(opts.candidates)]
                costs = []
                for cand in cands:
                    if not lookahead_costs:
                        break
                    xc = np.where(cand, tok[b], x[b])
                    la = _entropy(np.asarray(lookahead(params, jnp.asarray(xc[None])))[0])
                    left = eligible[b] & ~cand
                    now = ent[b] if opts.commit_cost == "entropy" else -lp_tok[b]
                    costs.append(now[cand].sum() + (la[left].mean() if left.any() else 0.0))
                best = int(np.argmin(costs)) if costs else 0
                if margins is not None and costs:
                    other = [c for c, cand in zip(costs, cands) if not np.array_equal(cand, cands[best])]
                    if other:
                        margins.append(min(other) - costs[best])
                commit = cands[best]
                x[b] = np.where(commit, tok[b], x[b])
                masked[b] &= ~commit
                committed_at[b][commit] = i
                logprob[b] += lp_tok[b][commit].sum()
                uncertainty[b] += ent[b][commit].sum()
            i += 1
    return dict(tokens=x, committed_at=committed_at, logprob=logprob, uncertainty=uncertainty, steps=i,
                skipped=skipped)


# ----------------------------------------------------------------------------- against references

@pytest.mark.parametrize("block_length,temperature", [(0, 1.0), (4, 1.0), (0, 0.0)])
def test_one_candidate_without_skipping_commits_its_single_draw(tiny, block_length, temperature):
    """C = 1, skip threshold 0: every step commits the one Gumbel-top-k draw of positions, with the
    same keys as a plain loop over fresh passes: token for token, step for step; one pass per step
    (the look-ahead is the next step's pass), none after the last."""
    cfg, params = tiny
    rows = _rows(cfg, 2, 14, {0: 72, 1: 105, 8: 32})
    opts = sampling.SamplerOptions(steps=6, temperature=temperature, block_length=block_length, candidates=1,
                                   skip_confidence=0.0)
    out = jax.device_get(sample(params, cfg, rows, jax.random.key(3), ("info-gain", opts)))
    want = reference(params, cfg, rows, jax.random.key(3), opts, lookahead_costs=False)
    assert np.array_equal(out["tokens"], want["tokens"])
    assert np.array_equal(out["committed_at"], want["committed_at"])
    np.testing.assert_allclose(out["logprob"], want["logprob"], rtol=1e-5)
    np.testing.assert_allclose(out["uncertainty"], want["uncertainty"], rtol=1e-5)
    assert int(out["steps"]) == want["steps"] and int(out["nfe"]) == want["steps"]
    assert int(out["rows"]) == 14 * want["steps"]


@pytest.mark.parametrize("skip,cost", [(0.0, "entropy"), (0.6, "entropy"), (0.0, "surprisal")])
def test_candidates_match_a_brute_force_of_their_costs(tiny, skip, cost):
    """C = 4 on L = 6: a brute force computing each candidate's cost with its own unbatched model call
    commits the same positions with the same tokens at the same steps over a full decode (and the
    costs it compared were not near-ties, so the check is not at the mercy of float rounding); the
    immediate term is the committed positions' entropy or, with commit_cost surprisal, -log p of
    their drawn tokens."""
    cfg, params = tiny
    params = _sharp(params, 5.0)
    rows = np.array([[72, -1, -1, -1, -1, -1], [-1, -1, 111, -1, -1, 33]], np.int32)
    rows[rows < 0] = special_ids(cfg.model).mask
    # position temperature 1: distinct candidates at most steps (at 0.1 the sharp model's draws agree)
    opts = sampling.SamplerOptions(steps=3, candidates=4, skip_confidence=skip, position_temperature=1.0,
                                   commit_cost=cost)
    margins: list = []
    skipped = 0
    for seed in range(3):
        out = jax.device_get(sample(params, cfg, rows, jax.random.key(seed), ("info-gain", opts)))
        want = reference(params, cfg, rows, jax.random.key(seed), opts, margins=margins)
        skipped += want["skipped"]
        assert np.array_equal(out["tokens"], want["tokens"]), seed
        assert np.array_equal(out["committed_at"], want["committed_at"]), seed
        np.testing.assert_allclose(out["uncertainty"], want["uncertainty"], rtol=1e-5)
    assert len(margins) >= 5 and min(margins) > 1e-4, margins
    assert (skipped > 0) == (skip > 0), skipped  # with 0.6 some positions were committed unevaluated


@pytest.mark.parametrize("cost", ["entropy", "surprisal"])
def test_batched_choice_is_the_argmin_of_the_look_ahead_costs(tiny, cost):
    """One step: the batched look-ahead's costs equal per-candidate recomputations, the choice is their
    argmin, the committed mask is that candidate's, and the next log-probs are its look-ahead."""
    cfg, params = tiny
    params = _sharp(params, 4.0)
    rows = jnp.asarray(_rows(cfg, 2, 10, {0: 72, 5: 32}))
    opts = sampling.SamplerOptions(steps=4, candidates=5, commit_cost=cost)
    logp = masked_log_probs(params, rows, cfg)
    eligible = rows == special_ids(cfg.model).mask

    def lookahead(x_NBL):
        N, B, L = x_NBL.shape
        return masked_log_probs(params, x_NBL.reshape(N * B, L), cfg).reshape(N, B, L, -1)

    out = jax.device_get(info_gain.step(logp, rows, eligible, jax.random.key(7), 4, opts, lookahead, False))
    assert int(out["nfe"]) == 5 and out["candidates"].sum(axis=-1).tolist() == [[2, 2]] * 5
    ent = _entropy(logp)
    for b in range(2):
        for c in range(5):
            cand = out["candidates"][c, b]
            xc = np.where(cand, out["tokens"][b], np.asarray(rows[b]))
            la = np.asarray(masked_log_probs(params, jnp.asarray(xc[None]), cfg))[0]
            left = np.asarray(eligible[b]) & ~cand
            now = ent[b] if cost == "entropy" else -out["lp_tok"][b]
            want = now[cand].sum() + _entropy(la)[left].mean()
            np.testing.assert_allclose(out["cost"][c, b], want, rtol=1e-5)
        assert out["choice"][b] == np.argmin(out["cost"][:, b])
        assert np.array_equal(out["commit"][b], out["candidates"][out["choice"][b], b])
        xb = np.where(out["commit"][b], out["tokens"][b], np.asarray(rows[b]))
        fresh = masked_log_probs(params, jnp.asarray(xb[None]), cfg)[0]
        np.testing.assert_allclose(out["next_logp"][b], fresh, atol=1e-5)


# ----------------------------------------------------------------------------- skipping

def _hand_step(top1, k_steps_left: int, skip: float, candidates: int = 3, position_temperature: float = 0.1):
    """info_gain.step on hand-made log-probs: position l's top token has probability top1[l] (the rest
    spread evenly over the other 3 tokens of a 5-token vocabulary whose id 4 is MASK); the look-ahead
    returns uniform log-probs. ``nfe`` tells which look-ahead ran (0, 1 or C sequences per row)."""
    L, V = len(top1), 5
    p = np.zeros((1, L, V))
    for pos, t in enumerate(top1):
        p[0, pos, :4] = (1 - t) / 3
        p[0, pos, pos % 4] = t
    logp = jnp.log(jnp.asarray(p, jnp.float32))

    def lookahead(x_NBL):
        return jnp.full(x_NBL.shape + (V,), -math.log(V), jnp.float32)

    x = jnp.full((1, L), 4, jnp.int32)
    opts = sampling.SamplerOptions(temperature=0.0, candidates=candidates, skip_confidence=skip,
                                   position_temperature=position_temperature)
    out = info_gain.step(logp, x, jnp.ones((1, L), bool), jax.random.key(0), k_steps_left, opts, lookahead,
                         True)
    return jax.device_get(out)


def test_confident_positions_are_committed_without_evaluation():
    """top-1 >= skip_confidence: committed at this step by every candidate (so no candidate choice
    is evaluated: one look-ahead pass, for the next step), at most k of them (the most confident);
    the rest of k is drawn among the others; 0 turns skipping off."""
    top1 = [0.95, 0.5, 0.97, 0.4, 0.3, 0.45]
    out = _hand_step(top1, 3, 0.9)  # k = ceil(6 / 3) = 2: both confident positions, nothing else
    assert out["commit"][0].tolist() == [True, False, True, False, False, False]
    assert np.all(out["candidates"] == out["candidates"][:1]) and int(out["nfe"]) == 1
    assert out["tokens"][0].tolist()[:3] == [0, 1, 2]  # temperature 0: the top tokens
    out = _hand_step(top1, 6, 0.9)  # k = 1: only the most confident one
    assert out["commit"][0].tolist() == [False, False, True, False, False, False] and int(out["nfe"]) == 1
    out = _hand_step(top1, 2, 0.9)  # k = 3: both, plus one drawn per candidate among the rest
    assert np.all(out["candidates"][:, 0, [0, 2]]) and out["candidates"].sum(axis=-1).tolist() == [[3]] * 3
    out = _hand_step(top1, 3, 0.0, position_temperature=5.0)  # off: positions drawn per candidate, evaluated
    assert int(out["nfe"]) == 3 and not np.all(out["candidates"] == out["candidates"][:1])
    out = _hand_step(top1, 3, 0.99)  # nobody is that confident
    assert out["candidates"].sum(axis=-1).tolist() == [[2]] * 3


def test_skipping_happens_in_a_decode_and_commits_confident_positions_first(tiny):
    """On a sharpened model with a low threshold, a decode with skipping differs from one without
    (skipped positions bypass the evaluation) and still fills every mask at the same count per step."""
    cfg, params = tiny
    params = _sharp(params, 6.0)
    rows = _rows(cfg, 2, 12, {0: 72})
    base = sampling.SamplerOptions(steps=4, candidates=3, skip_confidence=0.0)
    off = jax.device_get(sample(params, cfg, rows, jax.random.key(1), ("info-gain", base)))
    on = jax.device_get(sample(params, cfg, rows, jax.random.key(1), with_options(("info-gain", base),
                                                                                skip_confidence=0.5)))
    assert np.array_equal(on["commits"], off["commits"]) and np.all(on["complete"])
    want = reference(params, cfg, rows, jax.random.key(1), with_options(("info-gain", base),
                                                                         skip_confidence=0.5)[1])
    assert np.array_equal(on["committed_at"], want["committed_at"])
    assert not np.array_equal(on["committed_at"], off["committed_at"])


# ----------------------------------------------------------------------------- contract

def test_template_kept_masks_filled_seeds_and_pass_count(tiny):
    cfg, params = tiny
    mask_id = special_ids(cfg.model).mask
    rows = _rows(cfg, 3, 16, {0: 84, 1: 111, 7: 32, 15: 33})
    fixed = rows != mask_id
    sc = spec("info-gain", steps=6, block_length=5, candidates=3)
    a = jax.device_get(sample(params, cfg, rows, jax.random.key(5), sc))
    assert np.array_equal(a["tokens"][fixed], rows[fixed]), "a fixed token changed"
    assert not np.any(a["tokens"] == mask_id) and np.all(a["complete"])
    assert np.all(a["committed_at"][fixed] == -1) and np.all(a["committed_at"][~fixed] >= 0)
    b = jax.device_get(sample(params, cfg, rows, jax.random.key(5), sc))
    c = jax.device_get(sample(params, cfg, rows, jax.random.key(6), sc))
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["committed_at"], b["committed_at"])
    assert not np.array_equal(a["tokens"], c["tokens"])
    # the same count per step as the confidence rule
    conf = jax.device_get(sample(params, cfg, rows, jax.random.key(5), spec("confidence", steps=6,
                                                                             block_length=5)))
    assert np.array_equal(a["commits"], conf["commits"])
    # passes: 1 to start, C per step while the candidates differ, 1 when they are all the same action
    # (here: each block's last step, which commits all it has left), none after the last step
    assert int(a["nfe"]) <= 1 + 3 * (int(a["steps"]) - 1) and int(a["rows"]) == 16 * int(a["nfe"])


def test_bad_options_are_one_line_errors(tiny):
    cfg, params = tiny
    rows = _rows(cfg, 1, 8, {0: 72})
    unread = "the info-gain sampler does not take"
    for options, message in [
            ({"candidates": 0}, "candidates must be >= 1, got 0"),
            ({"position_temperature": 0.0}, "position_temperature must be a finite number > 0"),
            ({"skip_confidence": 1.5}, "skip_confidence must be in [0, 1] (0 = off)"),
            ({"fused": True}, f"{unread} 'fused'"), ({"prophet": 5.0}, f"{unread} 'prophet'"),
            ({"approx_cache": "dual"}, f"{unread} 'approx_cache'")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            sample(params, cfg, rows, jax.random.key(0), ("info-gain", sampling.SamplerOptions(**options)))
    with pytest.raises(ConfigError, match="the confidence sampler does not take 'candidates'"):
        sample(params, cfg, rows, jax.random.key(0), spec("confidence", candidates=2))


# ----------------------------------------------------------------------------- uncertainty

def _replay_uncertainty(log_probs, rows, out, mask_id) -> np.ndarray:
    """The summed entropy of each committed position under the step that committed it, from the
    decode's committed_at: step j's input is the output with every position committed at >= j masked."""
    tokens, at = np.asarray(out["tokens"]), np.asarray(out["committed_at"])
    total = np.zeros(len(rows))
    for j in range(int(out["steps"])):
        x = np.where((at >= j) | ((at < 0) & (rows == mask_id)), mask_id, tokens)
        ent = _entropy(log_probs(jnp.asarray(x)))
        total += np.where(at == j, ent, 0.0).sum(axis=1)
    return total


# ----------------------------------------------------------------------------- block diffusion

@pytest.fixture(scope="module")
def tiny_bd3():
    cfg = config_lib.load(None, ("objective.name=bd3", "objective.block_size=4", *TINY))
    return cfg, _sharp(model.init_params(cfg.model, jax.random.key(0)), 3.0)


@pytest.mark.parametrize("name", ["info-gain", "confidence"])
def test_bd3_cached_equals_uncached_and_uncertainty_replays(tiny_bd3, name):
    """bd3 runs: the look-ahead over the tiled KV cache equals the uncached [x_t ; x] look-ahead token
    for token, fixed tokens stay, every mask is filled, and `uncertainty` is the entropy at commit
    time under bd3's conditionals (replayed on the uncached layout)."""
    cfg, params = tiny_bd3
    mask_id = special_ids(cfg.model).mask
    rows = _rows(cfg, 2, 16, {0: 104, 1: 101, 2: 108, 3: 108, 4: 111, 10: 32})
    sc = spec(name, steps=7, **({"candidates": 3} if name == "info-gain" else {}))
    got = jax.device_get(sample(params, cfg, rows, jax.random.key(1), sc))
    want = jax.device_get(sample(params, cfg, rows, jax.random.key(1), with_options(sc, cache=False)))
    assert np.array_equal(got["tokens"], want["tokens"]) and np.all(got["complete"])
    assert np.array_equal(got["committed_at"], want["committed_at"])
    fixed = rows != mask_id
    assert np.array_equal(got["tokens"][fixed], rows[fixed]) and not np.any(got["tokens"] == mask_id)
    np.testing.assert_allclose(got["uncertainty"], want["uncertainty"], rtol=1e-4)

    def log_probs(x):  # p(. | noisy block, clean blocks before): each position's own block as the noisy one
        return subs_log_probs(bd3_objective.noisy_logits(params, x, x, cfg, 4), mask_id)

    np.testing.assert_allclose(got["uncertainty"], _replay_uncertainty(log_probs, rows, got, mask_id),
                               rtol=1e-4)
    if name == "info-gain":  # same counts per step as the confidence rule
        conf = jax.device_get(sample(params, cfg, rows, jax.random.key(1), spec("confidence", steps=7)))
        assert np.array_equal(got["commits"], conf["commits"])


def test_bd3_with_one_block_is_the_mdm_sampler(tiny_bd3):
    """b = n: the block loop's Info-Gain is the mdm sampler's (same noise shapes, same steps)."""
    cfg, params = tiny_bd3
    one = config_lib.load(None, ("objective.name=bd3", "objective.block_size=16", *TINY))
    as_mdm = config_lib.load(None, ("objective.name=mdm", *TINY))
    rows = _rows(one, 2, 16, {0: 104, 9: 32})
    sc = spec("info-gain", steps=5, candidates=3)
    got = jax.device_get(sample(params, one, rows, jax.random.key(4), sc))
    want = jax.device_get(sample(params, as_mdm, rows, jax.random.key(4), sc))
    assert np.array_equal(got["tokens"], want["tokens"])
    assert np.array_equal(got["committed_at"], want["committed_at"])
    np.testing.assert_allclose(got["uncertainty"], want["uncertainty"], rtol=1e-5)


# ----------------------------------------------------------------------------- command line

def test_sample_cli_runs_info_gain(tiny_trained_run):
    run = tiny_trained_run("mdm")
    code, out, err = cli_in_process(["sample", run, "--sampler", "info-gain", "--candidates", "2",
                                     "--template", "the [MASK:6] on the mat", "--steps", "3",
                                     "--num-samples", "2", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["sampler"] == "info-gain" and res["candidates"] == 2 and res["complete"]
    assert res["skip_confidence"] == 0.9 and res["position_temperature"] == 0.1
    for s in res["samples"]:
        assert s["text"].startswith("the ") and s["text"].endswith(" on the mat") and s["uncertainty"] > 0
    assert res["uncertainty_per_token"] == pytest.approx(sum(s["uncertainty"] for s in res["samples"]) / 12)
    code, _, err = cli_in_process(["sample", run, "--sampler", "info-gain", "--candidates", "0"])
    assert code == 2 and "candidates must be >= 1, got 0" in err
    code, _, err = cli_in_process(["sample", run, "--sampler", "info-gain", "--fused"])
    assert code == 2 and "the info-gain sampler does not take 'fused'" in err
