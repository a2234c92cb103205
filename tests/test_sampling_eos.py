"""End of text in every sampler (jaxorder.sampling.eos): after the first generated EOS the output is
EOS padding, sampling stops early when nothing but padding is left, and ignore_eos turns it off."""
import sys
from pathlib import Path

try:  # the repo root, when pytest runs without the package installed
    import jaxorder  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model, objectives, sampling
from jaxorder.config import ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.evaluation.runs import text_ids
from jaxorder.sampling import SamplerOptions, commit_filter, sample
from jaxorder.sampling.eos import after_eos, commit_after_eos, fill_after_eos, release_padding
from jaxorder.sampling.mdm import final_hidden
from jaxorder.sampling.prompts import build_inputs

V, L, B = 8, 8, 16  # ids 0..3 are text, 4..7 PAD MASK BOS EOS: a random model says EOS ~1 time in 5
EOS, MASK = V - 1, V - 3
BASE = ("model.d_model=16", "model.n_layers=1", "model.n_heads=2", f"model.vocab_size={V}",
        f"model.max_len={L}", f"data.seq_len={L}")
RUNS = {"l2r": (), "mdm": (), "bd3": ("objective.block_size=4", "model.max_len=16"), "ao_ar": ()}


def _run(name: str, seed: int = 0):
    cfg = config_lib.load(None, (*BASE, f"objective.name={name}", *RUNS[name]))
    params = model.init_params(cfg.model, jax.random.key(seed),
                               target_positions=objectives.of(cfg).target_positions)
    return cfg, params


def _steps(sampler: sampling.Sampler) -> dict:
    """steps=L for the samplers that take it (one commit per step at most: the EOS rule ends early)."""
    return {"steps": L} if "steps" in sampler.options else {}


def _needs(sampler: str, run: str, tmp_path: Path) -> tuple[dict, dict | None]:
    """The settings and companion runs a sampler cannot go without."""
    if sampler in ("speculative", "guided") and run != "ao_ar":  # any-order speculative drafts itself
        cfg, params = _run("l2r", seed=1)
        field = "draft" if sampler == "speculative" else "guide"
        return {field: field}, {field: sampling.Companion(cfg, params, field)}
    if sampler == "learned":  # all-zero filter: p = 0.5, one commit per step
        width = commit_filter.feature_width(("confidence",), 0)
        arrays = {"mean": np.zeros(width), "std": np.ones(width), "w0": np.zeros(width),
                  "w1": np.zeros((width, 2)), "b1": np.zeros(2), "w2": np.zeros(2), "b2": np.array(0.0)}
        path = commit_filter.save(tmp_path / commit_filter.FILTER_FILE, arrays,
                                  {"features": ["confidence"], "hidden_size": 0, "hidden_units": 2})
        return {"commit_filter": str(path)}, None
    if sampler == "perm":  # an explicit order: the one option it cannot go without
        return {"order": "perm:3,1,0,2-"}, None
    return {}, None


def _rows(cfg) -> np.ndarray:
    rows = np.full((B, L), MASK, np.int32)
    rows[:, 0] = 1  # a one-token prompt, as AR runs need
    return rows


def _plain_fill(x, generated):
    """The rule, one row and one position at a time."""
    out = np.array(x)
    for b in range(out.shape[0]):
        seen = False
        for i in range(out.shape[1]):
            if generated[b, i] and seen:
                out[b, i] = EOS
            seen = seen or (generated[b, i] and x[b, i] == EOS)
    return out


def test_fill_after_eos_matches_the_plain_rule():
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (64, 10))
    generated = rng.random((64, 10)) < 0.7  # fixed EOS tokens end nothing, fixed tokens never change
    np.testing.assert_array_equal(fill_after_eos(jnp.asarray(x), jnp.asarray(generated), EOS),
                                  _plain_fill(x, generated))
    assert np.array_equal(fill_after_eos(jnp.asarray(x), jnp.asarray(generated), None), x)


def test_commit_after_eos_commits_the_masked_positions_after_a_committed_eos_at_the_step_taken():
    x = jnp.array([[1, EOS, MASK, 2, MASK], [MASK, 3, MASK, EOS, MASK], [EOS, 2, MASK, 1, MASK]])
    masked = x == MASK
    committed_at = jnp.array([[0, 1, -1, 0, -1], [-1, 0, -1, 2, -1], [-1, 0, -1, 0, -1]])  # row 2: EOS fixed
    st = dict(x=x, masked=masked, committed_at=committed_at, step=jnp.int32(3),
              commits=jnp.zeros((4, 3), jnp.int32), eos_filled=jnp.zeros((3,), jnp.int32))
    out = commit_after_eos(st, EOS)
    np.testing.assert_array_equal(out["x"], [[1, EOS, EOS, EOS, EOS], [MASK, 3, MASK, EOS, EOS],
                                             [EOS, 2, MASK, 1, MASK]])
    np.testing.assert_array_equal(out["masked"], [[0, 0, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 1, 0, 1]])
    np.testing.assert_array_equal(out["committed_at"][:, 2], [2, -1, -1])  # filled at the step just taken
    np.testing.assert_array_equal(out["commits"][2], [2, 1, 0])
    np.testing.assert_array_equal(out["eos_filled"], [2, 1, 0])
    np.testing.assert_array_equal(after_eos(x, masked | (committed_at >= 0), EOS)[0], [0, 0, 1, 1, 1])


def _remask_state(x, committed_at, lp_at, ent_at=None, **more):
    x = jnp.array(x)
    lp_at = jnp.array(lp_at, jnp.float32)
    B = x.shape[0]
    return dict(x=x, masked=x == MASK, committed_at=jnp.array(committed_at), lp_at=lp_at,
                ent_at=jnp.zeros_like(lp_at) if ent_at is None else jnp.array(ent_at, jnp.float32),
                logprob=jnp.sum(jnp.where(jnp.isfinite(lp_at), lp_at, 0.0), axis=1),
                uncertainty=jnp.zeros((B,)) if ent_at is None else jnp.array(ent_at, jnp.float32).sum(axis=1),
                step=jnp.int32(2), commits=jnp.zeros((3, B), jnp.int32),
                eos_filled=jnp.zeros((B,), jnp.int32), **more)


def test_overwritten_text_leaves_a_remasking_runs_logprob_and_fills_discard_a_kept_pass():
    inf = np.inf
    st = _remask_state([[1, EOS, 2, MASK]], [[0, 1, 0, -1]], [[-0.1, -0.5, -0.7, inf]],
                       [[0.1, 0.2, 0.3, 0.0]], fresh=jnp.bool_(True), dirty=jnp.bool_(False))
    out = commit_after_eos(st, EOS)
    np.testing.assert_array_equal(out["x"], [[1, EOS, EOS, EOS]])
    np.testing.assert_allclose(out["logprob"], [-0.6])  # the 2 at position 2 was overwritten
    np.testing.assert_allclose(out["uncertainty"], [0.3])
    np.testing.assert_array_equal(np.isfinite(out["lp_at"]), [[1, 1, 0, 0]])  # padding, not a candidate
    np.testing.assert_array_equal(out["committed_at"], [[0, 1, 0, 1]])
    assert not bool(out["fresh"]) and bool(out["dirty"]) and out["eos_filled"].tolist() == [1]
    same = commit_after_eos(_remask_state([[1, EOS, EOS, 2]], [[0, 1, 1, -1]], [[-0.1, -0.5, inf, inf]],
                                          fresh=jnp.bool_(True)), EOS)  # already padded, fixed 2 stays
    assert bool(same["fresh"]) and same["x"].tolist() == [[1, EOS, EOS, 2]]


def test_release_padding_returns_the_padding_of_a_remasked_eos_to_mask():
    inf = np.inf
    st = _remask_state([[1, MASK, EOS, EOS],  # its drawn EOS (position 1) was just remasked
                        [1, EOS, EOS, EOS],  # its drawn EOS stays: so does its padding
                        [EOS, 2, EOS, EOS]],  # a fixed EOS ends nothing; the drawn one at 2 does
                       [[0, -1, 1, 1], [0, 1, 1, 1], [-1, 0, 1, 1]],
                       [[-0.1, inf, inf, inf], [-0.1, -0.5, inf, inf], [inf, -0.2, -0.3, inf]])
    out = release_padding(st, EOS, MASK)
    np.testing.assert_array_equal(out["x"], [[1, MASK, MASK, MASK], [1, EOS, EOS, EOS], [EOS, 2, EOS, EOS]])
    np.testing.assert_array_equal(out["masked"][0], [0, 1, 1, 1])
    np.testing.assert_array_equal(out["committed_at"][0], [0, -1, -1, -1])
    assert release_padding(st, None, MASK) is st


CASES = [(run, s.name, {}) for run in RUNS for s in sampling.for_config(_run(run)[0])]
# remasking: 4 steps, k = 2: the second step (the first with candidates) may remask 1
CASES += [("mdm", "confidence", {"remask": 1.0, "remask_candidates": 4, "steps": 4})]


def _eos_likely(params):
    """EOS's head column = token 1's: EOS as likely as the random model's favourite token, so rows end
    after some text (a random model alone rarely says EOS)."""
    return dict(params, head=params["head"].at[:, EOS].set(params["head"][:, 1]))


@pytest.mark.parametrize("run,name,extra", CASES,
                         ids=[f"{r}-{n}" + ("-remask" if e else "") for r, n, e in CASES])
def test_text_after_the_first_eos_is_padding_in_every_sampler(run, name, extra, tmp_path):
    cfg, params = _run(run)
    params = _eos_likely(params)
    given, companions = _needs(name, run, tmp_path)
    rows = _rows(cfg)
    generated = rows == MASK
    outs = {}
    for ignore in (False, True):
        settings = {**_steps(sampling.resolve(cfg, name)), **given, **extra, "ignore_eos": ignore}
        opts = SamplerOptions(**settings)
        outs[ignore] = jax.device_get(sample(params, cfg, rows, jax.random.key(3), name, opts, companions))
    tokens = np.asarray(outs[False]["tokens"])
    assert np.array_equal(tokens, _plain_fill(tokens, generated)), f"{name}: text after an EOS"
    assert np.array_equal(tokens[:, 0], rows[:, 0])
    ended = [(row[generated[b]] == EOS).any() and row[1] != EOS for b, row in enumerate(tokens)]
    assert any(ended), f"{name}: no row ended after some text (the test would prove nothing)"
    full = np.asarray(outs[True]["tokens"])
    assert not np.array_equal(full, _plain_fill(full, generated)), f"{name}: ignore_eos changed nothing"
    if extra:
        assert int(np.sum(outs[False]["remasked"])) > 0, "nothing was remasked (the case would prove nothing)"


def _eos_model(cfg, params):
    """Every position predicts EOS with p ~ 1: every block's output zeroed, all embeddings one vector
    (so every hidden state is the same h) and EOS's head column aimed at h."""
    layers = {k: dict(v, attn=dict(v["attn"], out=v["attn"]["out"] * 0),
                      mlp=dict(v["mlp"], down=v["mlp"]["down"] * 0))
              for k, v in params.items() if k.startswith("layer_")}
    p = {**params, **layers, "embed": jnp.broadcast_to(params["embed"][:1], params["embed"].shape)}
    if "target_embed" in p:
        p["target_embed"] = p["target_embed"] * 0
    hv = np.asarray(final_hidden(p, jnp.zeros((1, 1), jnp.int32), cfg))[0, 0]
    return dict(p, head=p["head"].at[:, EOS].set(jnp.asarray(40.0 * hv / (hv @ hv))))


@pytest.mark.parametrize("run,name", [("mdm", "confidence"), ("mdm", "margin"), ("bd3", "confidence"),
                                      ("l2r", "ar")])
def test_sampling_stops_early_when_only_eos_is_left(run, name):
    cfg, params = _run(run)
    eos_params = _eos_model(cfg, params)
    rows = _rows(cfg)
    steps = _steps(sampling.resolve(cfg, name))
    fast = jax.device_get(sample(eos_params, cfg, rows, jax.random.key(0), name, SamplerOptions(**steps)))
    slow = jax.device_get(sample(eos_params, cfg, rows, jax.random.key(0), name,
                                 SamplerOptions(**steps, ignore_eos=True)))
    assert np.all(fast["tokens"][:, 1:] == EOS) and np.all(slow["tokens"][:, 1:] == EOS)
    assert int(fast["nfe"]) < int(slow["nfe"]), (int(fast["nfe"]), int(slow["nfe"]))
    if name != "ar":
        assert int(fast["nfe"]) <= 2 and int(fast["steps"]) <= 2  # the first EOS at position 1 or 2 ends it


def test_max_new_tokens_sets_the_length_after_the_prompt():
    tok = ByteTokenizer()
    row = build_inputs(tok, None, 32, 64, prompt="abc", max_new_tokens=5)
    assert len(row) == 8 and (row[3:] == tok.mask_id).all()
    with pytest.raises(ConfigError, match="without --length"):
        build_inputs(tok, 10, 32, 64, prompt="abc", max_new_tokens=5)


def test_the_text_drops_the_eos_and_its_padding_but_keeps_fixed_tokens():
    tok = ByteTokenizer()
    e, p = tok.eos_id, tok.pad_id
    a, b, c = (ord(ch) for ch in "abc")
    ids = np.array([a, e, b, e, e, c, c, p])
    generated = np.array([0, 0, 1, 1, 1, 0, 1, 0], bool)  # the fixed EOS at 1 ends nothing
    np.testing.assert_array_equal(text_ids(ids, generated, tok, False), [a, e, b, c])  # fixed c kept
    np.testing.assert_array_equal(text_ids(ids, generated, tok, True), [a, e, b, e, e, c, c])
    r2l = np.array([e, e, b, e, c])  # r2l: generated right to left, the padding comes first
    np.testing.assert_array_equal(text_ids(r2l, np.array([1, 1, 1, 1, 0], bool), tok, False, reverse=True),
                                  [c])
