"""The remasking corrector (`--remask`, jaxorder/sampling/remask.py) against a plain reference loop.

The reference re-implements a decode step by step on the host: one model call for the step's
pass, then one separate model call per candidate with that candidate masked (the sampler batches
them all in one call), the budget formula written out, and the remasking applied by hand.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.objectives import mdm as mdm_objective
from jaxorder.objectives.common import special_ids
from jaxorder.sampling.mdm import final_hidden
from jaxorder.sampling.mdm_steps import block_schedule, commit_step, draw
from jaxorder.sampling.prompts import parse_template
from jaxorder.sampling.remask import budget

from conftest import run_sampler as sample
from conftest import spec

TINY_MDM = ("objective.name=mdm", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.seq_len=32")


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, TINY_MDM)
    return cfg, model.init_params(cfg.model, jax.random.key(0))


def end_of_text(x, masked, committed_at, lp_at, logprob, generated, i: int, eos: int, mask_id: int) -> int:
    """The EOS rule after a remasking step, one row and one position at a time (in place): padding
    (a committed EOS never drawn, lp_at = inf) with no drawn EOS before it goes back to MASK; then
    every generated position after the first committed EOS becomes padding (a masked one committed
    at step i, a drawn one leaving logprob). Returns the positions sent back to MASK."""
    released = 0
    for row in range(x.shape[0]):
        drawn = False
        for p in range(x.shape[1]):
            if committed_at[row, p] >= 0 and x[row, p] == eos and not masked[row, p]:
                if np.isfinite(lp_at[row, p]):
                    drawn = True
                elif not drawn:
                    x[row, p], masked[row, p], committed_at[row, p] = mask_id, True, -1
                    released += 1
        end = False
        for p in range(x.shape[1]):
            if end and generated[row, p]:
                if masked[row, p]:
                    committed_at[row, p] = i
                elif np.isfinite(lp_at[row, p]):
                    logprob[row] -= lp_at[row, p]
                x[row, p], masked[row, p], lp_at[row, p] = eos, False, np.inf
            end = end or (committed_at[row, p] >= 0 and not masked[row, p] and x[row, p] == eos)
    return released


def reference(params, cfg, tokens_BL, key, rule: str, steps: int, rho: float, n: int,
              block_length: int = 0, temperature: float = 1.0, eos: int | None = None,
              dropped: bool = False, resample: bool = False) -> dict:
    """The sampler's decode written as a plain loop, one model call per leave-one-out copy; ``eos``:
    with the end-of-text rule (``end_of_text``); ``dropped``: only candidates scoring below their
    log-prob at commit may be undone; ``resample``: an undone token is rewritten at once by a draw
    from its leave-one-out conditional (the draws of a step's [B, n] slots from one key)."""
    mask_id = special_ids(cfg.model).mask
    x = np.array(tokens_BL, np.int32)
    B, L = x.shape
    masked = x == mask_id
    generated, released = masked.copy(), 0
    start = int(np.argmax(masked.any(axis=0)))
    block_L, budgets = block_schedule(L, steps, block_length, start)
    committed_at = np.full((B, L), -1)
    lp_at = np.full((B, L), np.inf)
    logprob, remasked = np.zeros(B), np.zeros(B, int)
    opts = spec(rule, steps=steps, temperature=temperature)[1]
    logp_fn = jax.jit(lambda p, t: mdm_objective.masked_log_probs(p, t, cfg))
    i = 0
    for b, S in enumerate(budgets):
        in_block = block_L == b
        for j in range(S):
            eligible = masked & in_block[None, :]
            if not eligible.any():
                break
            left = S - j
            k = -(-eligible.sum(axis=1) // left)
            r = np.floor(rho * k * max(left - 1, 0) / S).astype(int)
            logp = np.asarray(logp_fn(params, jnp.asarray(x)))
            # candidates: committed generated tokens of the block, lowest log-prob at commit first
            order = np.argsort(np.where((committed_at >= 0) & in_block[None, :], lp_at, np.inf), axis=1,
                               kind="stable")
            scores, redraws = [], []
            for row in range(B):
                cands = [int(p) for p in order[row, :n] if np.isfinite(lp_at[row, p])
                         and committed_at[row, p] >= 0 and in_block[p]]
                row_scores, row_logp = {}, np.zeros((n, logp.shape[-1]), np.float32)
                if r.max() > 0:
                    for slot, p in enumerate(cands):
                        copy = x.copy()
                        copy[row, p] = mask_id
                        logp_copy = np.asarray(logp_fn(params, jnp.asarray(copy)))
                        row_scores[p] = float(logp_copy[row, p, x[row, p]])
                        row_logp[slot] = logp_copy[row, p]
                scores.append(row_scores)
                redraws.append((cands, row_logp))
            if resample and r.max() > 0:
                logp_BnV = np.stack([lp for _, lp in redraws])
                redraw_key = jax.random.fold_in(jax.random.fold_in(key, i), 1)
                new_Bn = np.asarray(draw(jnp.asarray(logp_BnV), redraw_key, opts))
            tok, commit, lp_tok = (np.asarray(a) for a in commit_step(
                jnp.asarray(logp), jnp.asarray(eligible), jax.random.fold_in(key, i), left, rule, opts, 0.9))
            x = np.where(commit, tok, x)
            masked &= ~commit
            committed_at = np.where(commit, i, committed_at)
            lp_at = np.where(commit, lp_tok, lp_at)
            logprob += np.where(commit, lp_tok, 0.0).sum(axis=1)
            for row in range(B):
                worse = [p for p in sorted(scores[row], key=scores[row].get)
                         if not dropped or scores[row][p] < lp_at[row, p]]
                for p in worse[: r[row]]:
                    logprob[row] -= lp_at[row, p]
                    remasked[row] += 1
                    if resample:
                        slot = redraws[row][0].index(p)
                        x[row, p], committed_at[row, p] = new_Bn[row, slot], i
                        lp_at[row, p] = redraws[row][1][slot, x[row, p]]
                        logprob[row] += lp_at[row, p]
                    else:
                        x[row, p], masked[row, p], committed_at[row, p] = mask_id, True, -1
                        lp_at[row, p] = np.inf
            if eos is not None:
                released += end_of_text(x, masked, committed_at, lp_at, logprob, generated, i, eos, mask_id)
            i += 1
    return dict(tokens=x, committed_at=committed_at, logprob=logprob, remasked=remasked, steps=i,
                released=released)


def prompted_case(cfg) -> np.ndarray:
    """Three rows of 16 masks, one with a 3-token prompt (fixed tokens are never candidates)."""
    tokens = np.full((3, 16), special_ids(cfg.model).mask, np.int32)
    tokens[1, :3] = [84, 111, 32]
    return tokens


def equals_reference(tiny, tokens, rule: str, block_length: int, **flags) -> tuple[dict, dict]:
    """(sampler output, reference) of an 8-step decode with R = 1 and 3 candidates, the EOS rule
    on, and ``flags`` (remask_dropped / remask_resample) on both; asserts they are equal."""
    cfg, params = tiny
    key = jax.random.key(3)
    out = sample(params, cfg, tokens, key, spec(rule, steps=8, remask=1.0, remask_candidates=3,
                                                block_length=block_length, **flags))
    ref = reference(params, cfg, tokens, key, rule, steps=8, rho=1.0, n=3, block_length=block_length,
                    eos=special_ids(cfg.model).eos, dropped=flags.get("remask_dropped", False),
                    resample=flags.get("remask_resample", False))
    for name in ("tokens", "committed_at", "remasked"):
        np.testing.assert_array_equal(np.asarray(out[name]), ref[name], err_msg=name)
    np.testing.assert_allclose(np.asarray(out["logprob"]), ref["logprob"], rtol=1e-4, atol=1e-4)
    assert int(out["steps"]) == ref["steps"]
    assert not (np.asarray(out["tokens"]) == special_ids(cfg.model).mask).any()
    assert (np.asarray(out["tokens"])[1, :3] == [84, 111, 32]).all()
    return out, ref


@pytest.mark.parametrize("rule,block_length", [("confidence", 0), ("confidence", 8), ("margin", 8),
                                               ("entropy", 0)])
def test_remasking_equals_the_plain_reference(tiny, rule, block_length):
    _, ref = equals_reference(tiny, prompted_case(tiny[0]), rule, block_length)
    assert ref["remasked"].sum() > 0, "the case must remask something to test anything"


@pytest.mark.parametrize("block_length", [0, 8])
def test_remasking_only_what_got_worse_equals_the_plain_reference(tiny, block_length):
    """--remask-dropped: a candidate is undone only if its current score fell below its log-prob at
    commit; the case must both undo some and spare some the full rule would have undone."""
    cfg, params = tiny
    tokens = prompted_case(cfg)
    _, ref = equals_reference(tiny, tokens, "confidence", block_length, remask_dropped=True)
    full = sample(params, cfg, tokens, jax.random.key(3),
                  spec("confidence", steps=8, remask=1.0, remask_candidates=3, block_length=block_length))
    assert 0 < ref["remasked"].sum() < np.asarray(full["remasked"]).sum(), "the filter must bite"


@pytest.mark.parametrize("block_length", [0, 8])
def test_resampling_equals_the_plain_reference(tiny, block_length):
    """--remask-resample: the chosen tokens are redrawn in place from their leave-one-out
    conditionals (a Gibbs step), so nothing goes back to MASK and the commits per step are the base
    rule's; some redraws must change their token for the case to test anything."""
    cfg, params = tiny
    tokens = prompted_case(cfg)
    out, ref = equals_reference(tiny, tokens, "confidence", block_length, remask_resample=True)
    base = sample(params, cfg, tokens, jax.random.key(3),
                  spec("confidence", steps=8, block_length=block_length))
    assert ref["remasked"].sum() > 0
    assert (np.asarray(out["commits"]).sum(axis=1) == np.asarray(base["commits"]).sum(axis=1)).all()
    assert (np.asarray(out["tokens"]) != np.asarray(base["tokens"])).any(), "no redraw changed a token"


def test_a_remasked_eos_frees_its_padding_as_the_plain_reference_does(tiny):
    """EOS made likely (its head column aimed at the mean hidden state of a masked row, logit ~2.5):
    rows end early, and the remasker returns some drawn EOS to MASK; its padding goes back to MASK
    with it (eos.release_padding) and the decode, logprob included, equals the plain loop."""
    cfg, params = tiny
    ids = special_ids(cfg.model)
    h_d = np.asarray(final_hidden(params, jnp.full((1, 16), ids.mask, jnp.int32), cfg))[0].mean(axis=0)
    params = dict(params, head=params["head"].at[:, ids.eos].set(jnp.asarray(2.5 * h_d / (h_d @ h_d))))
    tokens = np.full((3, 16), ids.mask, np.int32)
    tokens[1, :3] = [84, 111, 32]
    key = jax.random.key(0)
    out = sample(params, cfg, tokens, key, spec("confidence", steps=8, remask=1.0, remask_candidates=3))
    ref = reference(params, cfg, tokens, key, "confidence", steps=8, rho=1.0, n=3, eos=ids.eos)
    assert ref["released"] > 0, "no padding was released: the case tests nothing"
    for name in ("tokens", "committed_at", "remasked"):
        np.testing.assert_array_equal(np.asarray(out[name]), ref[name], err_msg=name)
    np.testing.assert_allclose(np.asarray(out["logprob"]), ref["logprob"], rtol=1e-4, atol=1e-4)


def test_a_zero_budget_equals_the_base_rule(tiny):
    """steps = n: one commit per step, so floor(R * 1 * (S - 1 - j) / S) = 0 at every step even at
    R = 1; the corrector then runs no extra copies and the decode is the base rule's, bit for bit."""
    cfg, params = tiny
    tokens = np.full((2, 12), special_ids(cfg.model).mask, np.int32)
    key = jax.random.key(5)
    base = sample(params, cfg, tokens, key, spec("confidence", steps=12))
    fixed = sample(params, cfg, tokens, key, spec("confidence", steps=12, remask=1.0))
    for name in ("tokens", "committed_at", "logprob", "nfe", "rows"):
        np.testing.assert_array_equal(np.asarray(base[name]), np.asarray(fixed[name]))
    assert int(fixed["remasked"].sum()) == 0


def test_templates_keep_their_fixed_tokens_and_fill_every_mask(tiny):
    cfg, params = tiny
    row = parse_template("To be, [MASK:5] not [MASK:3]!", ByteTokenizer())
    tokens = np.tile(row, (4, 1))
    out = sample(params, cfg, tokens, jax.random.key(1), spec("confidence", steps=4, remask=1.0,
                                                               remask_candidates=4))
    got = np.asarray(out["tokens"])
    fixed = tokens != special_ids(cfg.model).mask
    assert (got[fixed] == tokens[fixed]).all() and (got != special_ids(cfg.model).mask).all()
    assert (np.asarray(out["committed_at"])[fixed] == -1).all()


def test_the_budget_decays_to_zero_at_a_blocks_last_step():
    k = jnp.asarray([4, 1])
    got = [np.asarray(budget(0.5, k, left, 4)).tolist() for left in (4, 3, 2, 1)]
    expected = [[math.floor(0.5 * kk * (left - 1) / 4) for kk in (4, 1)] for left in (4, 3, 2, 1)]
    assert got == expected == [[1, 0], [1, 0], [0, 0], [0, 0]]


@pytest.mark.parametrize("options,message", [
    (dict(remask=1.5), "remask must be in [0, 1]"),
    (dict(remask=0.5, fused=True), "drop --fused"),
    (dict(remask=0.5, approx_cache="dual"), "drop --approx-cache"),
    (dict(remask_candidates=2), "give --remask too"),
    (dict(remask_dropped=True), "give --remask too"),
    (dict(remask_resample=True), "give --remask too"),
])
def test_bad_remask_options_are_one_line_errors(tiny, options, message):
    cfg, params = tiny
    tokens = np.full((1, 8), special_ids(cfg.model).mask, np.int32)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        sample(params, cfg, tokens, jax.random.key(0), spec("confidence", steps=4, **options))
    assert "\n" not in str(e.value)


def test_threshold_and_ancestral_do_not_take_remask(tiny):
    cfg, params = tiny
    tokens = np.full((1, 8), special_ids(cfg.model).mask, np.int32)
    for name in ("threshold", "ancestral"):
        with pytest.raises(ConfigError, match="does not take 'remask'"):
            sample(params, cfg, tokens, jax.random.key(0), spec(name, steps=4, remask=0.5))
