"""AR-guided unmasking (sampler `guided` of mdm runs): threshold 0, a plain uncached reference loop, the
guide's cache, templates, errors, seeds and `jaxorder sample --guide`.

Tiny randomly initialised models (mdm d_model 32, guide d_model 16) on 16 positions; the CLI test
samples the session's tiny trained mdm and l2r runs (conftest.tiny_trained_run). A random guide
gives every byte a probability near 1/260, so thresholds around 0.004 make runs of several lengths
(the reference test checks they happen).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.objectives.common import special_ids
from jaxorder.objectives.mdm import masked_log_probs
from jaxorder.sampling import Companion, SamplerOptions
from jaxorder.sampling.mdm_steps import block_schedule, draw
from jaxorder.sampling.prompts import parse_template

from conftest import cli_in_process

MDM = ("objective.name=mdm", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")
GUIDE = ("objective.name=l2r", "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "data.seq_len=16")
TOK = ByteTokenizer()
L = 16


@pytest.fixture(scope="module")
def runs():
    """(mdm cfg, mdm params, guide Companion): two random models."""
    cfg, gcfg = config_lib.load(None, MDM), config_lib.load(None, GUIDE)
    guide = Companion(gcfg, model.init_params(gcfg.model, jax.random.key(1)), "guide")
    return cfg, model.init_params(cfg.model, jax.random.key(0)), guide


def rows_of(cfg, *templates: str) -> np.ndarray:
    """Rows [B, L]: each a template ([MASK:n] spans) or all MASK for ''."""
    mask = special_ids(cfg.model).mask
    return np.stack([parse_template(t, TOK) if t else np.full(L, mask, np.int32) for t in templates])


# unprompted; a ragged prompt with a fixed span in the middle; masks in three places
ROWS = ("", "abc[MASK:5]xy[MASK:6]", "[MASK:2]hello[MASK:4]wor[MASK:2]")


def guided(params, cfg, rows, key, guide: Companion, **options) -> dict:
    opts = SamplerOptions(guide="guide", **options)
    return jax.device_get(sampling.sample(params, cfg, rows, key, "guided", opts, {"guide": guide}))


# ----------------------------------------------------------------------------- threshold 0

@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_threshold_zero_accepts_every_proposal_of_the_first_pass(runs, temperature):
    """guide_threshold 0: one mdm pass, and the output is that pass's proposals at the step key (the same
    draw as the confidence sampler with one step), every mask committed at step 0."""
    cfg, params, guide = runs
    rows, key = rows_of(cfg, *ROWS), jax.random.key(4)
    opts = SamplerOptions(temperature=temperature)
    out = guided(params, cfg, rows, key, guide, guide_threshold=0.0, temperature=temperature)
    masked = rows == special_ids(cfg.model).mask
    logp = masked_log_probs(params, jnp.asarray(rows), cfg)
    proposals = np.asarray(draw(logp, jax.random.fold_in(key, 0), opts))
    np.testing.assert_array_equal(out["tokens"], np.where(masked, proposals, rows))
    assert int(out["nfe"]) == 1 == int(out["steps"]) and out["complete"].all()
    np.testing.assert_array_equal(out["committed_at"], np.where(masked, 0, -1))
    lp = np.take_along_axis(np.asarray(logp), proposals[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out["logprob"], np.where(masked, lp, 0).sum(axis=1), rtol=1e-5)
    confidence = jax.device_get(sampling.sample(params, cfg, rows, key, "confidence",
                                                SamplerOptions(steps=1, temperature=temperature)))
    np.testing.assert_array_equal(out["tokens"], confidence["tokens"])


# ----------------------------------------------------------------------------- the plain reference

def reference(params, cfg, rows, key, guide: Companion, threshold: float, window: int, steps: int,
              block_length: int = 0, temperature: float = 1.0, fallback: str = "mdm") -> dict:
    """The sampler written as a plain loop: uncached mdm passes and, each step, the guide's full causal
    pass over [BOS, y_0 .. y_{L-2}] (y = x with every mask proposed); acceptance by a Python scan. With
    fallback "guide" ("product"), a row whose proposal at f the guide rejects commits f alone, drawn
    from the guide's distribution there (MASK excluded; times the mdm's, renormalized) with the step's
    second key."""
    ids = special_ids(cfg.model)
    opts = SamplerOptions(temperature=temperature)
    gmodel = guide.cfg.model
    mdm_logp = jax.jit(lambda x: masked_log_probs(params, x, cfg))
    guide_logp = jax.jit(lambda seq: jax.nn.log_softmax(
        model.apply(guide.params, gmodel, seq, jnp.broadcast_to(jnp.arange(L), seq.shape), "causal")))
    no_mask = np.where(np.arange(gmodel.vocab_size) == ids.mask, -np.inf, 0.0)
    propose = jax.jit(lambda logp, k: draw(logp, k, opts))
    x, B = rows.copy(), rows.shape[0]
    masked = x == ids.mask
    start = int(np.argmax(masked.any(axis=0)))
    block, budget = block_schedule(L, steps, block_length, start)
    W = window or L
    at = np.full(rows.shape, -1)
    logprob, glp = np.zeros(B), np.full((B, L), np.nan)
    commits, i = [], 0
    for b in range(len(budget)):
        for j in range(budget[b]):
            eligible = masked & (block == b)
            if not eligible.any():
                break
            logp = np.asarray(mdm_logp(jnp.asarray(x)))
            tok = np.array(propose(jnp.asarray(logp), jax.random.fold_in(key, i)))
            y = np.where(masked, tok, x)
            seq = np.concatenate([np.full((B, 1), ids.bos), y[:, :-1]], axis=1)
            g_full = np.asarray(guide_logp(jnp.asarray(seq)))
            g = np.take_along_axis(g_full, y[..., None], axis=-1)[..., 0].copy()
            f_B = np.argmax(eligible, axis=1)
            # the guide's draws at every row's f (used where its proposal there is rejected)
            g_at_f = np.asarray(jax.nn.log_softmax(g_full[np.arange(B), f_B] + no_mask))
            at_f = g_at_f if fallback == "guide" else np.asarray(
                jax.nn.log_softmax(g_at_f + logp[np.arange(B), f_B]))  # "product"
            drawn = np.asarray(propose(jnp.asarray(at_f[:, None]),
                                       jax.random.fold_in(jax.random.fold_in(key, i), 1)))[:, 0]
            commit = np.zeros_like(masked)
            scored_to = np.full(B, L)
            for r in range(B):
                if not eligible[r].any():
                    continue
                f = int(np.argmax(eligible[r]))
                if fallback != "mdm" and np.exp(g[r, f]) < threshold:
                    tok[r, f], g[r, f], commit[r, f] = drawn[r], g_at_f[r, drawn[r]], True
                    scored_to[r] = f + 1
                    continue
                for p in range(f, L):
                    if not masked[r, p]:
                        continue  # fixed tokens are read, not tested
                    if p == f or (eligible[r, p] and p < f + W and np.exp(g[r, p]) >= threshold):
                        commit[r, p] = True
                    else:
                        break
            if j == budget[b] - 1:
                commit |= eligible  # the block's budget is spent
            lp = np.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]
            logprob += np.where(commit, lp, 0).sum(axis=1)
            f_B1 = f_B[:, None]
            in_window = (np.arange(L) >= f_B1) & (np.arange(L) < np.minimum(f_B1 + W, scored_to[:, None]))
            glp = np.where(commit & in_window, g, glp)
            x, at = np.where(commit, tok, x), np.where(commit, i, at)
            masked &= ~commit
            commits.append(commit.sum(axis=1))
            i += 1
    return dict(tokens=x, committed_at=at, logprob=logprob, nfe=i, commits=np.array(commits),
                guide_logp=glp)


@pytest.mark.parametrize("threshold,window,steps,block_length", [
    (0.004, 0, L, 0), (0.003, 3, L, 0), (0.004, 0, 10, 8), (0.0035, 4, 12, 0)],
    ids=["whole", "window3-catch-up", "blocks8-budget", "window4-budget"])
def test_equals_a_plain_loop_with_the_uncached_guide(runs, threshold, window, steps, block_length):
    """Token for token and in committed_at, nfe, logprob and the guide's log p of every commit: the
    sampler against `reference`, over templates (fixed spans longer than the window: catch-up calls),
    ragged prompts, blocks and a step budget that binds; the runs accepted have several lengths."""
    cfg, params, guide = runs
    rows, key = rows_of(cfg, *ROWS, ""), jax.random.key(11)
    out = guided(params, cfg, rows, key, guide, guide_threshold=threshold, guide_window=window,
                 steps=steps, block_length=block_length)
    ref = reference(params, cfg, rows, key, guide, threshold, window, steps, block_length)
    np.testing.assert_array_equal(out["tokens"], ref["tokens"])
    np.testing.assert_array_equal(out["committed_at"], ref["committed_at"])
    assert int(out["nfe"]) == ref["nfe"] == int(out["steps"])
    np.testing.assert_array_equal(out["commits"][:ref["nfe"]], ref["commits"])
    np.testing.assert_allclose(out["logprob"], ref["logprob"], rtol=1e-5)
    np.testing.assert_allclose(out["guide_logp"], ref["guide_logp"], atol=1e-4)
    assert out["complete"].all()
    assert {1, 2}.issubset(set(ref["commits"].ravel())) and ref["commits"].max() >= 3  # runs of 1, 2, 3+


@pytest.mark.parametrize("fallback,threshold,window,steps,block_length", [
    ("guide", 0.004, 0, L, 0), ("guide", 0.003, 3, L, 0), ("guide", 0.004, 0, 10, 8), ("guide", 1.0, 0, L, 0),
    ("product", 0.004, 0, L, 0), ("product", 1.0, 0, 10, 8)],
    ids=["whole", "window3-catch-up", "blocks8-budget", "every-token-the-guide's", "product",
         "product-every-token"])
def test_guide_fallback_equals_the_plain_loop(runs, fallback, threshold, window, steps, block_length):
    """guide_fallback "guide" / "product": a rejected proposal at f is replaced by a draw from the guide
    (times the mdm) and commits alone; the sampler against `reference` token for token, in commits,
    logprob and the guide's log p (which must be the draw's: the cache may not keep the rejected
    proposal's slot)."""
    cfg, params, guide = runs
    rows, key = rows_of(cfg, *ROWS, ""), jax.random.key(12)
    # ignore_eos: the guide draws EOS here, and the reference has no end-of-text fill
    out = guided(params, cfg, rows, key, guide, guide_threshold=threshold, guide_window=window,
                 steps=steps, block_length=block_length, guide_fallback=fallback, ignore_eos=True)
    ref = reference(params, cfg, rows, key, guide, threshold, window, steps, block_length, fallback=fallback)
    np.testing.assert_array_equal(out["tokens"], ref["tokens"])
    np.testing.assert_array_equal(out["committed_at"], ref["committed_at"])
    np.testing.assert_array_equal(out["commits"][:ref["nfe"]], ref["commits"])
    np.testing.assert_allclose(out["logprob"], ref["logprob"], rtol=1e-5)
    np.testing.assert_allclose(out["guide_logp"], ref["guide_logp"], atol=1e-4)
    assert out["complete"].all()
    plain = guided(params, cfg, rows, key, guide, guide_threshold=threshold, guide_window=window,
                   steps=steps, block_length=block_length, ignore_eos=True)
    assert (out["tokens"] != plain["tokens"]).any()  # the fallback drew tokens of its own


# ----------------------------------------------------------------------------- the guide's cache

@pytest.mark.parametrize("window,block_length", [(0, 0), (2, 0), (5, 4)])
def test_cached_guide_log_probs_equal_the_uncached_guide_on_the_output(runs, window, block_length):
    """Every committed token the guide scored was scored given final tokens to its left, so guide_logp must
    equal the uncached guide's l2r log p of the output at those positions: a stale cache (rejected
    proposals kept, a slot skipped or fed twice) breaks it. NaN exactly at the fixed tokens here."""
    cfg, params, guide = runs
    rows = rows_of(cfg, *ROWS, "")
    out = guided(params, cfg, rows, jax.random.key(2), guide, guide_threshold=0.0038, guide_window=window,
                 steps=L, block_length=block_length)
    ids = special_ids(cfg.model)
    y = out["tokens"]
    seq = np.concatenate([np.full((len(y), 1), ids.bos), y[:, :-1]], axis=1)
    logits = model.apply(guide.params, guide.cfg.model, jnp.asarray(seq),
                         jnp.broadcast_to(jnp.arange(L), seq.shape), "causal")
    full = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), y[..., None], axis=-1)[..., 0]
    masked = rows == ids.mask
    np.testing.assert_array_equal(np.isnan(out["guide_logp"]), ~masked)
    np.testing.assert_allclose(out["guide_logp"][masked], full[masked], atol=1e-4)
    assert out["commits"].max() >= 2  # some step accepted a run of proposals


# ----------------------------------------------------------------------------- templates, extremes, seeds

def test_templates_keep_fixed_tokens_and_threshold_one_goes_in_reading_order(runs):
    """Fixed tokens never change and every mask is filled, at any threshold; a threshold no proposal
    reaches commits one position per step, left to right (the guide's run never extends)."""
    cfg, params, guide = runs
    rows = rows_of(cfg, *ROWS)
    masked = rows == special_ids(cfg.model).mask
    for threshold in (0.0, 0.004, 1.0):
        out = guided(params, cfg, rows, jax.random.key(5), guide, guide_threshold=threshold, steps=L)
        np.testing.assert_array_equal(out["tokens"][~masked], rows[~masked])
        assert out["complete"].all() and not (out["tokens"] == special_ids(cfg.model).mask).any()
    for r in range(len(rows)):  # threshold 1: masked positions committed at steps 0, 1, 2, ... in order
        np.testing.assert_array_equal(out["committed_at"][r][masked[r]], np.arange(masked[r].sum()))
    assert int(out["nfe"]) == int(masked.sum(axis=1).max())


def test_same_seed_same_output(runs):
    cfg, params, guide = runs
    rows = rows_of(cfg, *ROWS)
    a, b, c = (guided(params, cfg, rows, jax.random.key(s), guide, guide_threshold=0.004, steps=L)
               for s in (7, 7, 8))
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["committed_at"], b["committed_at"])
    assert not np.array_equal(a["tokens"], c["tokens"])


# ----------------------------------------------------------------------------- errors

def test_one_line_errors(runs):
    cfg, params, guide = runs
    rows, key = rows_of(cfg, ""), jax.random.key(0)
    with pytest.raises(ConfigError, match="needs a guide run: give --guide RUN_DIR"):
        sampling.sample(params, cfg, rows, key, "guided", SamplerOptions())
    with pytest.raises(ConfigError, match="guide run g is not loaded"):
        sampling.sample(params, cfg, rows, key, "guided", SamplerOptions(guide="g"))
    for objective in ("r2l", "mdm", "ao_ar"):
        other = config_lib.load(None, (*GUIDE, f"objective.name={objective}"))
        with pytest.raises(ConfigError, match=f"guide g is a {objective} run; the guide must be an l2r run"):
            guided(params, cfg, rows, key, Companion(other, None, "g"))
    big = config_lib.load(None, (*GUIDE, "model.vocab_size=300"))
    with pytest.raises(ConfigError, match="vocab_size 300, the sampled run 260; train the guide with"):
        guided(params, cfg, rows, key, Companion(big, None, "g"))
    bpe = config_lib.load(None, (*GUIDE, "data.tokenizer=bpe", "data.bpe_vocab_size=260"))
    with pytest.raises(ConfigError, match="another tokenizer than the sampled run; train the guide on the"):
        guided(params, cfg, rows, key, Companion(bpe, None, "g"))
    short = config_lib.load(None, (*GUIDE, "model.max_len=8", "data.seq_len=8"))
    with pytest.raises(ConfigError, match="length 16 exceeds the guide's model.max_len=8"):
        guided(params, cfg, rows, key, Companion(short, None, "g"))
    with pytest.raises(ConfigError, match="does not take 'guide'"):
        sampling.sample(params, cfg, rows, key, "confidence", SamplerOptions(guide="g"))
    spec = sampling.resolve(cfg, "guided")
    for bad, message in (({"guide_threshold": 1.5}, "guide_threshold must be in \\[0, 1\\]"),
                         ({"guide_threshold": -0.1}, "guide_threshold must be in"),
                         ({"guide_window": -1}, "guide_window must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            sampling.make_options(spec, bad)


# ----------------------------------------------------------------------------- the CLI

def test_jaxorder_sample_with_a_guide_run(tiny_trained_run):
    """`jaxorder sample MDM_RUN --sampler guided --guide L2R_RUN` on the session's tiny trained runs: a
    template is infilled, the guide passes are reported; a missing --guide is a one-line error."""
    from jaxorder.evaluation.runs import companion_dirs

    mdm_run, guide_run = tiny_trained_run("mdm"), tiny_trained_run("l2r")
    code, out, err = cli_in_process(["sample", mdm_run, "--sampler", "guided", "--guide", guide_run,
                                     "--guide-threshold", "0", "--template", "the [MASK:5] sat [MASK:4]",
                                     "--num-samples", "2", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["sampler"] == "guided" and res["guide"] == str(guide_run) and res["guide_threshold"] == 0.0
    assert res["forward_passes"] == 1 and res["guide_forward_passes"] == 2  # the prefill "the " + one call
    template = parse_template("the [MASK:5] sat [MASK:4]", TOK)
    fixed = template != special_ids(config_lib.load(None, MDM).model).mask
    for sample in res["samples"]:
        np.testing.assert_array_equal(np.asarray(sample["tokens"])[fixed], template[fixed])
    # a sweep's generate grid: a relative guide names a run of the sweep (its output directory)
    spec = sampling.resolve(config_lib.load_saved(mdm_run / "config.yaml"), "guided")
    sweep_dir = guide_run.parent
    assert companion_dirs(spec, {"guide": "l2r"}, sweep_dir) == {"guide": str(sweep_dir / "l2r")}
    code, _, err = cli_in_process(["sample", mdm_run, "--sampler", "guided", "--steps", "4"])
    assert code == 2 and "needs a guide run: give --guide RUN_DIR" in err
    code, out, err = cli_in_process(["sample", mdm_run, "--sampler", "guided", "--guide", guide_run,
                                     "--guide-threshold", "1", "--steps", "16", "--length", "16"])
    assert code == 0, err
    assert "16 forward passes, 16 guide passes" in err  # one token per step; no prefill (unprompted)
