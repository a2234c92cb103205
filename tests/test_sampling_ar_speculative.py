"""AR speculative decoding (sampler `speculative`): greedy = `ar`, exactness, errors, the draft run loading.

Tiny randomly initialised models (d_model 32 / 16) for everything but the CLI test, which trains 3
steps on a tiny corpus. The exactness test uses a 7-token vocabulary (3 tokens + PAD, MASK, BOS,
EOS) so the target's chain-rule distribution over complete samples can be enumerated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import Companion, SamplerOptions
from jaxorder.sampling.ar_speculative import sampling_probs

from conftest import ar_rows, cli_in_process, train_on_corpus

TINY = ("objective.name=l2r", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=32")
SMALL = ("objective.name=l2r", "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32")
TOK = ByteTokenizer()
N = 10  # generated tokens


@pytest.fixture(scope="module")
def runs():
    """(target cfg, params, random draft Companion): the draft is another, smaller random model."""
    cfg, dcfg = config_lib.load(None, TINY), config_lib.load(None, SMALL)
    params = model.init_params(cfg.model, jax.random.key(0))
    return cfg, params, Companion(dcfg, model.init_params(dcfg.model, jax.random.key(1)), "draft")


def kept(out: dict, pad: int) -> list[list[int]]:
    return [[int(t) for t in row if t != pad] for row in np.asarray(out["tokens"])]


def speculative(params, cfg, rows, key, draft: Companion, **options) -> dict:
    opts = SamplerOptions(draft="draft", **options)
    return jax.device_get(sampling.sample(params, cfg, rows, key, "speculative", opts, {"draft": draft}))


@pytest.mark.parametrize("direction,drafter", [("l2r", "random"), ("l2r", "self"), ("r2l", "random")])
def test_greedy_equals_ar_token_for_token(runs, direction, drafter):
    """Temperature 0: the output is greedy `ar` decoding, with a random draft (mostly rejected) and
    with the target as its own draft (everything accepted); ragged prompts as in `ar`."""
    cfg, params, draft = runs
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name=direction))
    draft = (Companion(dataclasses.replace(draft.cfg, objective=cfg.objective), draft.params)
             if drafter == "random" else Companion(cfg, params, "self"))
    rows = ar_rows(cfg, [TOK.encode("To be"), [], TOK.encode("or not to")], N)
    pad = special_ids(cfg.model).pad
    greedy = SamplerOptions(temperature=0.0)
    ref = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(0), "ar", greedy))
    out = speculative(params, cfg, rows, jax.random.key(3), draft, temperature=0.0, draft_length=3)
    assert kept(out, pad) == kept(ref, pad)
    np.testing.assert_array_equal(out["generated"], ref["generated"])
    np.testing.assert_array_equal(out["eos"], ref["eos"])
    np.testing.assert_allclose(out["logprob"], ref["logprob"], rtol=1e-4, atol=1e-4)
    # the shortest prompt is empty: no target prefill, one target call per round
    assert int(out["nfe"]) == int(out["steps"]) and int(out["draft_nfe"]) == 1 + 3 * int(out["steps"])
    if drafter == "self" and not out["eos"][1]:  # row 1 (prompt "", prefilled): 4 tokens a round, the
        assert int(out["rounds"][1]) == 3 and int(out["accepted"][1]) == 3 + 3 + 2  # last cut at 10


def test_equal_prompts_batch_and_draft_length_one(runs):
    cfg, params, draft = runs
    rows = ar_rows(cfg, [TOK.encode("abc")] * 4, N)
    greedy = SamplerOptions(temperature=0.0, ignore_eos=True)
    ref = jax.device_get(sampling.sample(params, cfg, rows, jax.random.key(0), "ar", greedy))
    out = speculative(params, cfg, rows, jax.random.key(0), draft, temperature=0.0, draft_length=1,
                      ignore_eos=True)
    np.testing.assert_array_equal(out["tokens"], ref["tokens"])
    assert np.all(out["generated"] == N) and np.all(out["rounds"] <= N)


# ----------------------------------------------------------------------------- exactness

def _chain_rule(params, cfg, prompt: list[int], new: int, options: SamplerOptions) -> dict[tuple, float]:
    """Every complete sample (generated tokens, EOS ending a sample) -> its probability under the
    target's filtered ancestral sampling, by brute force over all prefixes."""
    ids = special_ids(cfg.model)
    V = cfg.model.vocab_size
    banned = jnp.zeros((V,), bool).at[jnp.array([ids.pad, ids.mask, ids.bos])].set(True)

    def next_probs(prefix: tuple) -> np.ndarray:
        seq = jnp.asarray([[ids.bos, *prompt, *prefix]], jnp.int32)
        logits = model.apply(params, cfg.model, seq, jnp.arange(seq.shape[1])[None], "causal")[:, -1]
        return np.asarray(sampling_probs(logits[:, None], banned, options)[0, 0], np.float64)

    out: dict[tuple, float] = {}

    def walk(prefix: tuple, prob: float) -> None:
        if len(prefix) == new or (prefix and prefix[-1] == ids.eos and not options.ignore_eos):
            out[prefix] = prob
            return
        p = next_probs(prefix)
        for tok in np.flatnonzero(p > 0):
            walk((*prefix, int(tok)), prob * p[tok])

    walk((), 1.0)
    return out


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.8, top_k=3)],
                         ids=["T1", "T0.8-top3"])
def test_samples_follow_the_targets_chain_rule(options):
    """Chi-square of complete samples (EOS stops a row) against the target's chain-rule law, with a
    different, smaller random draft (so drafts are rejected, resampled and get bonus tokens)."""
    small_vocab = ("model.vocab_size=7", "model.max_len=8", "data.seq_len=8")
    cfg = config_lib.load(None, (*TINY, *small_vocab))
    dcfg = config_lib.load(None, (*SMALL, *small_vocab))
    params = model.init_params(cfg.model, jax.random.key(5))
    draft = Companion(dcfg, model.init_params(dcfg.model, jax.random.key(6)))
    prompt, new, n = [0], 3, 4000
    opts = SamplerOptions(**options)
    law = _chain_rule(params, cfg, prompt, new, opts)
    assert abs(sum(law.values()) - 1) < 1e-5
    rows = ar_rows(cfg, [prompt] * n, new)
    out = speculative(params, cfg, rows, jax.random.key(7), draft, draft_length=2,
                      **options)
    eos = special_ids(cfg.model).eos
    counts: dict[tuple, int] = {}
    for row, generated, stopped in zip(np.asarray(out["tokens"]), out["generated"], out["eos"]):
        sample = tuple(int(t) for t in row[1:1 + generated - stopped]) + ((eos,) if stopped else ())
        counts[sample] = counts.get(sample, 0) + 1
    assert set(counts) <= set(law), set(counts) - set(law)
    keys = sorted(law, key=law.get, reverse=True)
    big = [k for k in keys if law[k] * n >= 5]
    observed = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    expected = [law[k] * n for k in big] + [n * (1 - sum(law[k] for k in big))]
    if expected[-1] < 1e-9:
        observed, expected = observed[:-1], expected[:-1]
    assert len(big) >= 15  # enough cells for the test to see a wrong law
    p_value = stats.chisquare(observed, np.asarray(expected) * sum(observed) / sum(expected)).pvalue
    assert p_value > 1e-3, (p_value, observed, expected)
    assert 0 < np.sum(out["accepted"]) < np.sum(out["generated"])  # both acceptances and rejections


# ----------------------------------------------------------------------------- errors

def test_one_line_errors(runs):
    cfg, params, draft = runs
    rows = ar_rows(cfg, [[1, 2]], 4)
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="needs a draft run: give --draft RUN_DIR"):
        sampling.sample(params, cfg, rows, key, "speculative", SamplerOptions())
    with pytest.raises(ConfigError, match="draft run d is not loaded"):
        sampling.sample(params, cfg, rows, key, "speculative", SamplerOptions(draft="d"))
    with pytest.raises(ConfigError, match="draft_length must be >= 1"):
        speculative(params, cfg, rows, key, draft, draft_length=0)
    small_vocab = config_lib.load(None, (*SMALL, "model.vocab_size=300"))
    with pytest.raises(ConfigError, match="vocab_size 300, the target 260; train the draft with model.vocab"):
        speculative(params, cfg, rows, key, Companion(small_vocab, None, "d"))
    for objective in ("r2l", "mdm"):
        other = config_lib.load(None, (*SMALL, f"objective.name={objective}"))
        with pytest.raises(ConfigError, match=f"is a {objective} run; the draft must be an l2r run"):
            speculative(params, cfg, rows, key, Companion(other, None, "d"))
    bpe = config_lib.load(None, (*SMALL, "data.tokenizer=bpe", "data.bpe_vocab_size=260"))
    with pytest.raises(ConfigError, match="another tokenizer than the target; train the draft on the"):
        speculative(params, cfg, rows, key, Companion(bpe, None, "d"))
    # the order the draft must read in is the target's: an l2r draft of an r2l target is refused
    r2l = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="r2l"))
    with pytest.raises(ConfigError, match=r"draft d is a l2r run; the draft must be an r2l run \(the target"):
        speculative(params, r2l, ar_rows(r2l, [[1, 2]], 4), key, Companion(draft.cfg, None, "d"))
    short = config_lib.load(None, (*SMALL, "model.max_len=4", "data.seq_len=4"))
    with pytest.raises(ConfigError, match="length 6 exceeds the draft's model.max_len=4; use a shorter"):
        speculative(params, cfg, rows, key, Companion(short, None, "d"))
    with pytest.raises(ConfigError, match="does not take 'draft'"):
        sampling.sample(params, cfg, rows, key, "ar", SamplerOptions(draft="d"))
    for bad in ({"draft_length": 0}, {"draft_length": "2"}):
        with pytest.raises(ConfigError):
            sampling.make_options(sampling.resolve(cfg, "speculative"), bad)


# ----------------------------------------------------------------------------- the draft run, loaded

def test_the_draft_run_is_loaded_by_sample_eval_generate_and_a_sweep(tmp_path, repeated_corpus):
    """`jaxorder sample --draft`, a sweep's generate grid (a relative draft = a run of the sweep) and
    `eval --generate` load the draft run; the run as its own draft accepts every draft token."""
    from jaxorder.cli import build_parser, given_options
    from jaxorder.evaluation.runs import companion_dirs
    from jaxorder.experiments.sweep import _sample_quality

    run = tmp_path / "l2r"
    cfg = train_on_corpus(run, (*TINY, "data.seq_len=16"), repeated_corpus)
    code, out, err = cli_in_process(["sample", run, "--sampler", "speculative", "--draft", run,
                                     "--draft-length", "3", "--num-samples", "2", "--temperature", "0",
                                     "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["sampler"] == "speculative" and res["draft"] == str(run) and res["draft_length"] == 3
    if not any(s["stopped_at_eos"] for s in res["samples"]):  # 16 tokens in 4 rounds of 4
        assert res["accepted_per_round"] == 3.0 and res["forward_passes"] == 4
        assert res["draft_forward_passes"] == 1 + 3 * 4
    code, _, err = cli_in_process(["sample", run, "--sampler", "speculative", "--draft", tmp_path / "nope"])
    assert code == 2 and "has no checkpoints" in err
    code, _, err = cli_in_process(["sample", run, "--sampler", "speculative"])
    assert code == 2 and "needs a draft run: give --draft RUN_DIR" in err
    code, _, err = cli_in_process(["sample", run, "--draft", run])
    assert code == 2 and "the ar sampler does not take 'draft'" in err
    # a sweep's generate grid (eval --generate per setting; same inputs as above: compiled already)
    spec = sampling.resolve(cfg, "speculative")
    assert companion_dirs(spec, {"draft": str(run)}, tmp_path / "elsewhere") == {"draft": str(run)}
    gen = {"num_samples": 2, "samplers": ["speculative"],
           "options": {"draft": ["l2r"], "draft_length": [3], "temperature": [0.0]}}
    with contextlib.redirect_stderr(io.StringIO()):
        (row,) = _sample_quality(gen, "l2r", cfg, run)
    assert row["sampler"] == "speculative" and row["draft_forward_passes"] > row["forward_passes"]
    assert row["accepted_per_round"] == res["accepted_per_round"]
    # eval --generate takes the same flags
    args = build_parser().parse_args(["eval", str(run), "--generate", "--sampler", "speculative", "--draft",
                                      "d", "--draft-length", "2"])
    assert given_options(args) == {"draft": "d", "draft_length": 2}


def test_sweep_generate_grid_takes_draft_options(tmp_path):
    from jaxorder.experiments.sweep import load_sweep

    base = tmp_path / "base.yaml"
    base.write_text("objective: {name: l2r}\n")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: base.yaml\ngenerate: {samplers: [ar, speculative], draft: [small], "
                     "draft_length: [2, 4]}\n")
    gen = load_sweep(sweep)["generate"]
    assert gen["options"] == {"draft": ["small"], "draft_length": [2, 4]}
    sweep.write_text("base: base.yaml\ngenerate: {samplers: [speculative], draft_length: 0}\n")
    with pytest.raises(ConfigError, match="draft_length must be >= 1"):
        load_sweep(sweep)


def test_every_combination_of_the_small_vocab_is_enumerated():
    """The brute-force law itself: with no filtering its sum is 1 over all 3-token continuations."""
    cfg = config_lib.load(None, (*TINY, "model.vocab_size=7", "model.max_len=8", "data.seq_len=8"))
    params = model.init_params(cfg.model, jax.random.key(0))
    law = _chain_rule(params, cfg, [0], 2, SamplerOptions(ignore_eos=True))
    assert len(law) == 4 ** 2 and set(law) == set(itertools.product([0, 1, 2, 6], repeat=2))
    assert abs(sum(law.values()) - 1) < 1e-6
