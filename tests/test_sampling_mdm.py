"""Masked-diffusion samplers, Gumbel noise, templates, `jaxorder sample` and sample quality.

A tiny randomly initialised mdm model (d_model 32, 2 layers) is enough for everything except the
CLI test, which trains 10 steps on a tiny corpus. Every sampler compiles once per (config,
sampler) and is reused within the module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.evaluation.sample_quality import judge_nll_params, unigram_entropy_bits
from jaxorder.objectives.common import special_ids
from jaxorder.objectives.mdm import chain_rule_nll
from jaxorder.sampling import noise as noise_lib
from jaxorder.sampling.mdm import score_path
from jaxorder.sampling.mdm_steps import block_schedule, tokens_per_step
from jaxorder.sampling.prompts import build_inputs, parse_template

from conftest import cli_in_process, spec, with_options
from conftest import run_sampler as sample

TINY_MDM = ("objective.name=mdm", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.seq_len=32")
TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, TINY_MDM)
    return cfg, model.init_params(cfg.model, jax.random.key(0))


def _template_rows(batch: int) -> np.ndarray:
    row = parse_template("To be, [MASK:5] not [MASK:3]!", TOK)
    return np.tile(row, (batch, 1))


# ----------------------------------------------------------------------------- chain rule

def test_forced_l2r_path_reproduces_fixed_order_chain_rule(tiny):
    """steps = n, k = 1, l2r order, teacher-forced: the sampler's summed log-probs equal the exact
    l2r chain rule of fixed-order scoring (same conditionals), and so do r2l and a random order."""
    cfg, params = tiny
    B, L = 3, 16
    tokens = jax.random.randint(jax.random.key(1), (B, L), 0, 256)
    orders = jnp.stack([jnp.arange(L), jnp.arange(L)[::-1], jax.random.permutation(jax.random.key(2), L)])
    logp = np.asarray(score_path(params, cfg, tokens, orders))
    nll = np.asarray(jax.jit(lambda p, t, o: chain_rule_nll(p, t, o, cfg))(params, tokens, orders))
    np.testing.assert_allclose(-logp[0], nll[0], rtol=1e-5)  # row 0: the l2r order
    np.testing.assert_allclose(-logp, nll, rtol=1e-5)


def test_free_sampler_with_n_steps_commits_one_per_step_and_scores_its_own_path(tiny):
    """Unforced, steps = n: k = 1 every step; at T = 0 the confidence sampler is the greedy order
    with argmax tokens, so its log p equals -chain_rule_nll(greedy) of its own output."""
    cfg, params = tiny
    B, L = 2, 16
    start = np.full((B, L), special_ids(cfg.model).mask)
    out = sample(params, cfg, start, jax.random.key(0), spec("confidence", steps=L, temperature=0.0))
    assert np.all(np.asarray(out["commits"]) == 1) and int(out["steps"]) == L == int(out["nfe"])
    greedy = np.asarray(chain_rule_nll(params, out["tokens"], None, cfg))
    np.testing.assert_allclose(-np.asarray(out["logprob"]), greedy, rtol=1e-5)


# ----------------------------------------------------------------------------- infilling, seeds

@pytest.mark.parametrize("name", ["ancestral", "confidence", "threshold"])  # margin/entropy: below
def test_infilling_keeps_template_fills_every_mask_and_respects_seeds(tiny, name):
    cfg, params = tiny
    mask_id = special_ids(cfg.model).mask
    rows = _template_rows(4)
    fixed = rows != mask_id
    sc = spec(name, steps=4, temperature=1.0, **({"threshold": 0.5} if name == "threshold" else {}),
              block_length=8 if name == "confidence" else 0)
    a = jax.device_get(sample(params, cfg, rows, jax.random.key(5), sc))
    assert np.array_equal(a["tokens"][fixed], rows[fixed]), "a fixed template token changed"
    assert not np.any(a["tokens"] == mask_id) and np.all(a["complete"]), "a mask was left or MASK sampled"
    assert int(a["steps"]) <= 4 and a["commits"].sum(axis=0).tolist() == [int((~fixed[0]).sum())] * 4
    assert np.all(np.isfinite(a["logprob"]))
    b = jax.device_get(sample(params, cfg, rows, jax.random.key(5), sc))
    assert np.array_equal(a["tokens"], b["tokens"]), "same seed, different samples"
    c = jax.device_get(sample(params, cfg, rows, jax.random.key(6), sc))
    assert not np.array_equal(a["tokens"], c["tokens"]), "another seed gave the same samples at T=1"
    assert TOK.decode(a["tokens"][0]).startswith("To be, ") and TOK.decode(a["tokens"][0]).endswith("!")


def test_temperature_zero_is_deterministic_across_seeds(tiny):
    cfg, params = tiny
    rows = _template_rows(2)
    sc = spec("margin", steps=3, temperature=0.0)
    a, b = (jax.device_get(sample(params, cfg, rows, jax.random.key(s), sc)) for s in (0, 1))
    assert np.array_equal(a["tokens"], b["tokens"])
    assert np.array_equal(a["tokens"][0], a["tokens"][1])  # identical inputs, no noise: identical rows
    fixed = rows != special_ids(cfg.model).mask
    assert np.array_equal(a["tokens"][fixed], rows[fixed]) and np.all(a["complete"])


def test_threshold_commits_at_least_one_per_step_and_stops_early(tiny):
    cfg, params = tiny
    mask_id = special_ids(cfg.model).mask
    B, L, steps = 3, 24, 6
    start = np.full((B, L), mask_id)
    # random weights: every confidence is ~1/256, far below 0.9 -> one per step (the most confident),
    # and the last step of the budget commits the rest
    hi = jax.device_get(sample(params, cfg, start, jax.random.key(0), spec("threshold", steps=steps,
                                                                                     threshold=0.9)))
    assert int(hi["steps"]) == steps and np.all(hi["complete"])
    assert np.all(hi["commits"][:-1] == 1) and np.all(hi["commits"][-1] == L - steps + 1)
    # a threshold below every confidence commits everything in the first step
    lo = jax.device_get(sample(params, cfg, start, jax.random.key(0), spec("threshold", steps=steps,
                                                                                     threshold=1e-4)))
    assert (int(lo["steps"]) == 1 == int(lo["nfe"]) and np.all(lo["commits"][0] == L)
            and np.all(lo["complete"]))
    # in between: >= 1 per step until a row is complete, never more than `steps` steps
    mid_thr = float(np.median(np.exp(hi["logprob"] / L)))
    mid = jax.device_get(sample(params, cfg, start, jax.random.key(0), spec("threshold", steps=steps,
                                                                                      threshold=mid_thr)))
    assert 1 <= int(mid["steps"]) <= steps and np.all(mid["complete"])
    for b in range(B):
        c = mid["commits"][:, b]
        done = int(np.argmax(np.cumsum(c) == L))  # step at which row b completed
        assert np.all(c[:done + 1] >= 1) and np.all(c[done + 1:] == 0) and c.sum() == L


def test_block_schedule_and_semi_autoregressive_order(tiny):
    block_L, budget = block_schedule(10, 7, 4, start=2)
    assert block_L.tolist() == [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1] and budget.tolist() == [4, 3]
    with pytest.raises(ConfigError, match="cannot fill"):
        block_schedule(16, 3, 4)
    cfg, params = tiny
    B, L = 2, 16
    sc = spec("entropy", steps=4, temperature=1.0, block_length=4, ignore_eos=True)  # the schedule, not EOS
    out = jax.device_get(sample(params, cfg, np.full((B, L), special_ids(cfg.model).mask),
                                jax.random.key(3), sc))
    assert np.all(out["commits"] == 4) and np.all(out["complete"])  # one block of 4 per step


def test_tokens_per_step_is_the_ceiling():
    """k = ceil(masked left / steps left) per row: committing k at every step spreads the masks as
    evenly as the steps allow (10 over 4 steps: 3, 3, 2, 2) and finishes exactly at the last step."""
    left = np.array([10, 4, 1])  # masked positions left in each row
    per_step = []
    for steps_left in (4, 3, 2, 1):
        k = np.asarray(tokens_per_step(jnp.asarray(np.arange(12)[None, :] < left[:, None]), steps_left))
        per_step.append(k.tolist())
        left = left - k
    assert per_step == [[3, 1, 1], [3, 1, 0], [2, 1, 0], [2, 1, 0]] and left.tolist() == [0, 0, 0]


# ----------------------------------------------------------------------------- fused kernel path

@pytest.mark.parametrize("name,temperature,block,fixed", [
    ("confidence", 0.0, 0, False), ("confidence", 1.0, 8, False), ("threshold", 1.0, 0, False),
    ("confidence", 1.0, 8, True)])
def test_fused_step_gives_the_same_tokens_as_the_plain_path(tiny, name, temperature, block, fixed):
    """Same key: at T = 0 (argmax) and at T = 1 (the same Gumbel noise in both paths, fresh or fixed)."""
    cfg, params = tiny
    rows = _template_rows(4)
    key = jax.random.key(11)
    sc = spec(name, steps=4, temperature=temperature, **({"threshold": 0.004} if name == "threshold" else {}),
              block_length=block, fixed_noise=fixed)
    plain = jax.device_get(sample(params, cfg, rows, key, sc))
    fused = jax.device_get(sample(params, cfg, rows, key, with_options(sc, fused=True)))
    if name == "threshold":  # the threshold really commits extra positions here
        assert plain["commits"][0].min() > int(np.ceil(8 / 4))
    assert np.array_equal(plain["tokens"], fused["tokens"])
    assert np.array_equal(plain["commits"], fused["commits"])
    np.testing.assert_allclose(plain["logprob"], fused["logprob"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,temperature", [("confidence", 0.0), ("margin", 1.0)])
def test_fused_pallas_interpret_mode_gives_the_same_tokens(tiny, name, temperature):
    """The Pallas kernel itself (interpret mode on CPU, ~10 s per sampler) vs the plain path."""
    cfg, params = tiny
    rows = _template_rows(2)
    sc = spec(name, steps=4, temperature=temperature)
    plain = jax.device_get(sample(params, cfg, rows, jax.random.key(3), sc))
    kern = jax.device_get(sample(params, cfg, rows, jax.random.key(3), with_options(sc, fused=True,
                                                                                          interpret=True)))
    assert np.array_equal(plain["tokens"], kern["tokens"])
    np.testing.assert_allclose(plain["logprob"], kern["logprob"], rtol=1e-5)


# ----------------------------------------------------------------------------- Gumbel noise

def test_gumbel_noise_shapes_and_kernel_counters():
    key = jax.random.key(4)
    from pallas_kernels import noise as pk_noise
    g, direct, x = jax.jit(lambda k: (
        noise_lib.gumbel_noise(k, (2, 3, 5)),
        pk_noise.gumbel_at(pk_noise.noise_keys(k), jnp.arange(6, dtype=jnp.uint32).reshape(2, 3, 1),
                           jnp.arange(5, dtype=jnp.uint32)),
        noise_lib.gumbel_noise(k, (1 << 16,), "high")))(key)
    assert g.shape == (2, 3, 5) and g.dtype == jnp.float32
    assert np.array_equal(np.asarray(g), np.asarray(direct))  # the fused kernel's noise, same counters
    x = np.asarray(x, np.float64)
    assert abs(x.mean() - 0.5772) < 0.02 and abs(x.var() - math.pi ** 2 / 6) < 0.05
    with pytest.raises(ValueError):
        noise_lib.gumbel_noise(key, (3,), "float16")


def test_high_precision_noise_passes_tail_test_float32_fails():
    """2^28 draws; exceedances of c = 16.7 (beyond the 24-bit cap 16.64) ~ Poisson(N P(g > c)) = 15."""
    chunk, chunks, c = 1 << 22, 64, 16.7
    lam = chunk * chunks * noise_lib.gumbel_tail_probability(c)

    def count(precision):
        def body(i, acc):
            g = noise_lib.gumbel_noise(jax.random.fold_in(jax.random.key(2024), i), (chunk,), precision)
            return acc[0] + jnp.sum(g > c), jnp.maximum(acc[1], jnp.max(g))

        n, mx = jax.jit(lambda: jax.lax.fori_loop(0, chunks, body, (jnp.zeros((), jnp.int32),
                                                                    jnp.full((), -jnp.inf))))()
        return int(n), float(mx)

    n32, max32 = count("float32")
    nhi, maxhi = count("high")
    # float32: truncated at 16.64 -> no exceedance although ~15 are expected (P(0) = e^-15 = 3e-7)
    assert max32 <= noise_lib.FLOAT32_CAP + 1e-4 and n32 == 0
    # high: the count is a plausible Poisson(lam) draw (two-sided p > 1e-3: 4 <= n <= 30 for lam = 15)
    assert 14.5 < lam < 15.5 and 4 <= nhi <= 30 and maxhi > c, (nhi, lam, maxhi)


# ----------------------------------------------------------------------------- templates, quality

def test_template_syntax():
    ids = parse_template("ab[MASK:3]c[MASK]", TOK)
    assert ids.tolist() == [97, 98, 257, 257, 257, 99, 257]
    for bad in ("no masks", "x [MASK:0] y", "x [MASK:two] y"):
        with pytest.raises(ConfigError):
            parse_template(bad, TOK)
    row = build_inputs(TOK, 6, 32, 64, prompt="hi")
    assert row.tolist() == [104, 105, 257, 257, 257, 257]
    assert len(build_inputs(TOK, None, 32, 64)) == 32
    with pytest.raises(ConfigError, match="template fixes"):
        build_inputs(TOK, 8, 32, 64, template="[MASK:2]")
    with pytest.raises(ConfigError, match="max_len"):
        build_inputs(TOK, 100, 32, 64)


def test_unigram_entropy_and_judge_nll():
    assert unigram_entropy_bits([[1, 2], [3, 4]]) == pytest.approx(2.0)
    assert unigram_entropy_bits(["aaaa"]) == 0.0 and unigram_entropy_bits([]) == 0.0
    assert unigram_entropy_bits([[1, 1, 2, 9]], exclude=[9]) == pytest.approx(0.9182958, rel=1e-6)
    cfg = config_lib.load(None, ("objective.name=l2r", "model.d_model=32", "model.n_layers=2",
                                 "model.n_heads=2", "data.seq_len=8"))
    params = model.init_params(cfg.model, jax.random.key(0))
    texts = ["hello, world!", "short", "héll"]  # windows of 8 tokens: 8+5, 5, 5 (bytes)
    res = judge_nll_params(params, cfg, texts, TOK)
    from jaxorder.objectives import l2r
    one = jax.jit(lambda p, t: l2r.sequence_token_nll(p, t, cfg).sum())
    want = sum(float(one(params, jnp.asarray(TOK.encode(t)[s:s + 8])[None])) for t in texts for s in (0, 8)
               if len(TOK.encode(t)) > s)
    assert res["bytes"] == 13 + 5 + 5 and res["nll_nats"] == pytest.approx(want, rel=1e-5)
    assert res["bpb"] == pytest.approx(want / math.log(2) / 23, rel=1e-5)
    with pytest.raises(ConfigError, match="l2r"):
        # an mdm run of the same shape: without the check it would score the texts
        mdm_cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="mdm"))
        judge_nll_params(params, mdm_cfg, texts, TOK)


# ----------------------------------------------------------------------------- CLI

def test_cli_sample_mdm_run_and_errors(tmp_path, repeated_corpus):
    from jaxorder.training.loop import train
    cfg = config_lib.load(None, (*TINY_MDM, "data.source=text", f"data.path={repeated_corpus}",
                                 "data.batch_size=8", "train.steps=10", "train.eval_every=10",
                                 "train.checkpoint_every=10", "train.async_checkpointing=false",
                                 "eval.batches=1", "eval.mdm_time_samples=1"))
    run = tmp_path / "mdm"
    with contextlib.redirect_stderr(io.StringIO()):
        train(cfg, run)
    code, out, _ = cli_in_process(["sample", run, "--template", "the [MASK:3] sat on [MASK:4] mat",
                                   "--sampler", "margin", "--steps", "4", "--num-samples", "2", "--seed", "1",
                                   "--json"])
    assert code == 0
    res = json.loads(out)
    assert ([s["text"][:4] for s in res["samples"]] == ["the "] * 2 and res["complete"]
            and res["steps_taken"] <= 4)
    assert all(s["text"].endswith(" mat") and len(s["tokens"]) == 23 for s in res["samples"])
    # same shapes: no recompilation
    code, out, err = cli_in_process(["sample", run, "--template", "the [MASK:3] sat on [MASK:4] mat",
                                     "--sampler", "margin", "--steps", "4", "--num-samples", "2",
                                     "--seed", "2"])
    assert code == 0 and out.startswith("--- sample 1/2") and "\nthe " in out and " mat\n" in out
    assert "margin, 4 steps" in err
    code, _, err = cli_in_process(["sample", run, "--sampler", "nope"])
    assert code == 2 and "unknown sampler" in err
    code, _, err = cli_in_process(["sample", run, "--template", "[MASK:4]", "--length", "8"])
    assert code == 2 and "template fixes the length" in err
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_text("objective: {name: ao_ar}\n")
    # fails before any restore
    code, _, err = cli_in_process(["sample", untrained, "--sampler", "confidence"])
    assert code == 2 and err.strip() == ("error: unknown sampler 'confidence'; for ao_ar runs use one of "
                                         "l2r, r2l, random, greedy, perm, speculative")
