"""The learned sampler (jaxorder/sampling/learned.py) against hand-set filters and a plain host loop.

Filters are written by hand (`write_filter`): one that always says yes, one that always says no
but ranks by confidence, random ones. The reference decode re-implements a step on the host: the
model's log-probs and final hidden states (two separate calls, not the sampler's fused pass), the
features and the MLP in numpy, the commit rule and the end-of-text stop written out. The tiny
random model's head is scaled so its distributions are peaked; the end-of-text model is built by
zeroing every block's output so a position's hidden state depends on its input token alone.
"""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxorder import config as config_lib
from jaxorder import model, sampling
from jaxorder.config import ConfigError
from jaxorder.data import ByteTokenizer
from jaxorder.objectives.common import special_ids
from jaxorder.objectives.mdm import masked_log_probs
from jaxorder.sampling import SamplerOptions, commit_filter, sample
from jaxorder.sampling.learned import commit_rule
from jaxorder.sampling.mdm import final_hidden
from jaxorder.sampling.mdm_steps import draw
from jaxorder.sampling.prompts import parse_template

from conftest import TINY, cli_in_process, train_on_corpus

TINY_MDM = ("objective.name=mdm", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.seq_len=32")
B, L, PROMPT = 3, 16, 3
TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def peaked():
    cfg = config_lib.load(None, TINY_MDM)
    params = model.init_params(cfg.model, jax.random.key(0))
    return cfg, dict(params, head=params["head"] * 30.0)


def write_filter(directory, features=("confidence",), hidden_size=0, units=2, seed=None, **arrays):
    """A filter file reading `features`: zeros and identity standardization, `arrays` set by hand,
    or (seed) random weights scaled to logits of a few units."""
    width = commit_filter.feature_width(tuple(features), hidden_size)
    rng = np.random.default_rng(seed or 0)
    base = {"mean": np.zeros(width), "std": np.ones(width), "w0": np.zeros(width),
            "w1": np.zeros((width, units)), "b1": np.zeros(units), "w2": np.zeros(units), "b2": np.array(0.0)}
    if seed is not None:  # standardization not the identity, so the reference checks it too
        base.update(mean=rng.normal(size=width) * 0.1, std=rng.uniform(0.5, 2.0, size=width),
                    w0=rng.normal(size=width) * 1.5 / np.sqrt(width), w1=rng.normal(size=(width, units)),
                    b1=rng.normal(size=units), w2=rng.normal(size=units) * 0.5, b2=np.array(1.0))
    base.update({k: np.asarray(v, np.float64) for k, v in arrays.items()})
    return commit_filter.save(directory / commit_filter.FILTER_FILE, base,
                              {"features": list(features), "hidden_size": hidden_size, "hidden_units": units})


def _rows(cfg, batch=B, length=L, prompt=PROMPT):
    rows = np.full((batch, length), special_ids(cfg.model).mask, np.int32)
    rows[:, :prompt] = np.arange(batch * prompt).reshape(batch, prompt) % 26 + 97
    return rows


def _learned(params, cfg, rows, key, path, **options):
    return jax.device_get(sample(params, cfg, rows, jax.random.key(key), "learned",
                                 SamplerOptions(commit_filter=str(path), **options)))


def reference(params, cfg, rows, key, path, steps, block_length=0, temperature=1.0, threshold=0.9,
              floor="filter", fixed_noise=False) -> dict:
    """The learned decode as a plain host loop (module docstring)."""
    filt = commit_filter.load(path)
    a = {k: np.asarray(v, np.float64) for k, v in filt.arrays.items()}
    ids = special_ids(cfg.model)
    x = np.array(rows, np.int32)
    Bn, Ln = x.shape
    generated = x == ids.mask
    start = int(np.argmax(generated.any(axis=0)))
    span = Ln - start
    bl = block_length if 0 < block_length < span else span
    nb = -(-span // bl)
    budgets = [steps // nb + (1 if b < steps % nb else 0) for b in range(nb)]
    logp_fn = jax.jit(lambda t: masked_log_probs(params, t, cfg))
    hid_fn = jax.jit(lambda t: final_hidden(params, t, cfg))
    draw_fn = jax.jit(lambda lp, k: draw(lp, k, SamplerOptions(temperature=temperature)))
    committed_at, eos_filled, step = np.full((Bn, Ln), -1), np.zeros(Bn, int), 0
    for b in range(nb):
        lo, hi = start + b * bl, min(start + (b + 1) * bl, Ln)
        for j in range(budgets[b]):
            masked = x == ids.mask
            if not masked[:, lo:hi].any():
                break
            logp32 = logp_fn(jnp.asarray(x))
            step_key = jax.random.key(key) if fixed_noise else jax.random.fold_in(jax.random.key(key), step)
            tok = np.asarray(draw_fn(logp32, step_key))
            logp = np.asarray(logp32, np.float64)
            p = np.exp(logp)
            top2 = np.sort(p, axis=-1)[..., ::-1][..., :2]
            in_block = np.zeros(Ln, bool)
            in_block[lo:hi] = True
            cols = {"confidence": np.take_along_axis(p, tok[..., None], -1)[..., 0],
                    "margin": top2[..., 0] - top2[..., 1],
                    "entropy": -np.sum(np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0), axis=-1),
                    "is_end": np.isin(tok, [ids.eos, ids.pad]).astype(float),
                    "filled": np.broadcast_to((1 - masked.sum(1) / generated.sum(1))[:, None], (Bn, Ln)),
                    "block_filled": np.broadcast_to((1 - (masked & in_block).sum(1) / np.maximum(
                        (generated & in_block).sum(1), 1))[:, None], (Bn, Ln)),
                    "progress": np.full((Bn, Ln), j / budgets[b]),
                    "block_position": np.broadcast_to((np.arange(Ln) - lo) / (hi - lo), (Bn, Ln))}
            feats = [cols[f][..., None] for f in filt.features if f != "hidden"]
            if "hidden" in filt.features:
                feats.append(np.asarray(hid_fn(jnp.asarray(x)), np.float64))
            z = (np.concatenate(feats, axis=-1) - a["mean"]) / a["std"]
            logit = z @ a["w0"] + np.maximum(z @ a["w1"] + a["b1"], 0) @ a["w2"] + a["b2"]
            prob = 1 / (1 + np.exp(-logit))
            commit = np.zeros((Bn, Ln), bool)
            for r in range(Bn):
                idx = np.nonzero(masked[r] & in_block)[0]
                if len(idx):
                    last = budgets[b] - j == 1
                    commit[r, idx] = last | (prob[r, idx] >= threshold)
                    best = prob[r, idx] if floor == "filter" else cols["confidence"][r, idx]
                    commit[r, idx[np.argmax(best)]] = True  # the first maximum: the lower position
                left = masked[r] & ~commit[r]
                ends = np.isin(tok[r], [ids.eos, ids.pad]) & (prob[r] >= threshold)
                if left.any() and ends[left].all():
                    commit[r] |= left
                    eos_filled[r] += left.sum()
            x = np.where(commit, tok, x)
            committed_at[commit] = step
            step += 1
    return {"tokens": x, "committed_at": committed_at, "steps": step, "eos_filled": eos_filled}


# ----------------------------------------------------------------------------- hand-set filters

def test_always_yes_filter_fills_each_block_in_its_first_step(peaked, tmp_path):
    cfg, params = peaked
    path = write_filter(tmp_path, b2=30.0)
    out = _learned(params, cfg, _rows(cfg), 0, path, steps=8, block_length=4)
    # blocks [3, 7), [7, 11), [11, 15), [15, 16), two budgeted steps each: one is enough
    assert int(out["steps"]) == 4 == int(out["nfe"]) and np.all(out["complete"])
    assert out["commits"][:4].T.tolist() == [[4, 4, 4, 1]] * B
    block = np.r_[[-1] * PROMPT, (np.arange(L - PROMPT)) // 4]
    assert np.array_equal(out["committed_at"], np.broadcast_to(block, (B, L)))
    assert not np.any(out["eos_stopped"])


def test_always_no_filter_commits_one_per_step_the_most_filter_confident(peaked, tmp_path):
    """Filter prob < e^-5 everywhere but increasing in confidence: one commit per step, the most
    confident, i.e. exactly the confidence sampler at one token per step (same key, same draws); and
    decreasing in confidence, the least confident position first. Unscaled random weights: the
    peaked model's confidences tie at 1.0 within float32 rounding, which two passes break apart
    differently (the sampler's fused pass and masked_log_probs agree to ~1e-6, not bit for bit)."""
    cfg, peaked_params = peaked
    params = dict(peaked_params, head=peaked_params["head"] / 30.0)
    rows = _rows(cfg)
    n = L - PROMPT
    decoded = {}
    for temperature, fixed in ((0.0, False), (1.0, False), (1.0, True)):
        up = _learned(params, cfg, rows, 2, write_filter(tmp_path / "up", w0=[100.0], b2=-10.0), steps=n,
                      temperature=temperature, fixed_noise=fixed)
        ref = jax.device_get(sample(params, cfg, rows, jax.random.key(2), "confidence",
                                    SamplerOptions(steps=n, temperature=temperature, fixed_noise=fixed)))
        assert np.all(up["commits"] == 1) and int(up["nfe"]) == n
        assert np.array_equal(up["tokens"], ref["tokens"])
        assert np.array_equal(up["committed_at"], ref["committed_at"])
        np.testing.assert_allclose(up["logprob"], ref["logprob"], rtol=1e-6)
        decoded[temperature, fixed] = ref["tokens"]
    assert not np.array_equal(decoded[1.0, False], decoded[1.0, True]), "--fixed-noise changed nothing"
    down = _learned(params, cfg, rows, 2, write_filter(tmp_path / "down", w0=[-100.0], b2=-5.0), steps=n)
    first = np.argmax(down["committed_at"] == 0, axis=1)  # the position committed at step 0
    logp = np.asarray(masked_log_probs(params, jnp.asarray(rows), cfg))
    tok = np.asarray(draw(jnp.asarray(logp), jax.random.fold_in(jax.random.key(2), 0), SamplerOptions()))
    conf = np.where(rows == special_ids(cfg.model).mask, np.take_along_axis(logp, tok[..., None], -1)[..., 0],
                    np.inf)
    assert first.tolist() == np.argmin(conf, axis=1).tolist()
    # with the confidence floor the same filter only adds commits to the confidence rule: it accepts
    # none here, so the decode is the confidence sampler's
    floored = _learned(params, cfg, rows, 2, tmp_path / "down", steps=n, filter_floor="confidence")
    ref = jax.device_get(sample(params, cfg, rows, jax.random.key(2), "confidence", SamplerOptions(steps=n)))
    assert np.array_equal(floored["tokens"], ref["tokens"])
    assert np.array_equal(floored["committed_at"], ref["committed_at"])


@pytest.mark.parametrize("temperature, block_length, steps, seed, floor, fixed",
                         [(1.0, 4, 7, 1, "filter", False), (0.0, 0, 5, 2, "filter", False),
                          (1.0, 5, 13, 3, "filter", False), (1.0, 4, 7, 1, "confidence", False),
                          (0.0, 5, 13, 3, "confidence", False), (1.0, 5, 13, 3, "confidence", True)])
def test_learned_equals_the_host_reference_loop(peaked, tmp_path, temperature, block_length, steps, seed,
                                                floor, fixed):
    """A random filter over every feature, the hidden state included: token for token, step for step;
    the forced commit the filter's favourite or (``filter_floor`` confidence) the most confident; the
    noise fresh at every step or (``fixed_noise``) the same at every step."""
    cfg, params = peaked
    if floor == "confidence":  # untie the peaked model's confidences (see the always-no test)
        params = dict(params, head=params["head"] / 10.0)
    path = write_filter(tmp_path, commit_filter.FEATURES, cfg.model.d_model, units=8, seed=seed)
    rows = _rows(cfg)
    # the reference has no fill after a committed EOS, which the less peaked model's confident commits reach
    out = _learned(params, cfg, rows, seed, path, steps=steps, block_length=block_length,
                   temperature=temperature, filter_floor=floor, ignore_eos=floor == "confidence",
                   fixed_noise=fixed)
    ref = reference(params, cfg, rows, seed, path, steps, block_length, temperature, floor=floor,
                    fixed_noise=fixed)
    assert np.array_equal(out["tokens"], ref["tokens"])
    assert np.array_equal(out["committed_at"], ref["committed_at"]) and int(out["steps"]) == ref["steps"]
    per_step = np.bincount(ref["committed_at"][ref["committed_at"] >= 0], minlength=steps)
    assert 1 < len(set(per_step[:ref["steps"]].tolist())), "the filter should commit varying counts per step"
    assert np.array_equal(out["stop_filled"], ref["eos_filled"]) and np.all(out["complete"])


def test_commit_rule_by_hand():
    """Threshold, the forced best one, the last step, and the end-of-text stop on positions left
    after the ordinary commits (any block)."""
    eos, pad = 9, 8
    prob = jnp.array([[0.95, 0.2, 0.5, 0.99, 0.97], [0.3, 0.6, 0.5, 0.95, 0.4], [0.3, 0.2, 0.1, 0.95, 0.92]])
    tok = jnp.array([[1, 2, 3, eos, pad], [1, 2, 3, eos, 4], [1, 2, 3, eos, eos]])
    masked = jnp.array([[True, True, True, True, True], [True, True, False, True, True],
                        [False, False, True, True, True]])
    eligible = masked & jnp.array([True, True, True, False, False])[None, :]
    commit, filled = commit_rule(prob, tok, masked, eligible, 3, 0.9, (eos, pad))
    # row 0: 0.95 passes; 1 and 2 stay masked, so no stop. row 1: none passes -> the best (0.6); left
    # 0 and 4 -> no stop. row 2: the forced best eligible (position 2) commits, and all that is left
    # (3, 4) is EOS with p >= 0.9 -> filled.
    assert np.asarray(commit).tolist() == [[True, False, False, False, False],
                                           [False, True, False, False, False],
                                           [False, False, True, True, True]]
    assert np.asarray(filled).tolist() == [[False] * 5, [False] * 5, [False, False, False, True, True]]
    last, _ = commit_rule(prob, tok, masked, eligible, 1, 0.9, (eos, pad))
    assert np.array_equal(np.asarray(last) & np.asarray(eligible), np.asarray(eligible))
    assert np.asarray(last)[0].tolist() == [True, True, True, True, True]  # then 3, 4 are end text
    # eos_stop off (the ablation): row 2 keeps its forced commit only
    no_stop, none_filled = commit_rule(prob, tok, masked, eligible, 3, 0.9, (eos, pad), stop=False)
    assert np.asarray(no_stop)[2].tolist() == [False, False, True, False, False]
    assert not np.any(np.asarray(none_filled))


# ----------------------------------------------------------------------------- end of text

def _end_model(cfg, params, predict: int):
    """Every block's output zeroed: a position's hidden state is a function of its input token, so
    every masked position predicts `predict` with p ~ 1 (head column aimed at MASK's hidden state)."""
    layers = {k: dict(v, attn=dict(v["attn"], out=v["attn"]["out"] * 0),
                      mlp=dict(v["mlp"], down=v["mlp"]["down"] * 0))
              for k, v in params.items() if k.startswith("layer_")}
    p = {**params, **layers}
    mask_id = special_ids(cfg.model).mask
    h = np.asarray(final_hidden(p, jnp.full((1, 1), mask_id), cfg))[0, 0]
    return dict(p, head=p["head"].at[:, predict].set(jnp.asarray(40.0 * h / (h @ h))))


def test_end_of_text_stop_fills_the_rest_and_stops(peaked, tmp_path):
    cfg, peaked_params = peaked
    params = dict(peaked_params, head=peaked_params["head"] / 30.0)  # other logits O(1), the aimed one 40
    ids = special_ids(cfg.model)
    rows = _rows(cfg, prompt=2)  # blocks [2, 6), [6, 10), [10, 14), [14, 16)
    eos_model = _end_model(cfg, params, ids.eos)
    yes = write_filter(tmp_path / "yes", b2=30.0)
    out = _learned(eos_model, cfg, rows, 0, yes, steps=8, block_length=4)
    # step 0 commits block 0 and everything after it is EOS with p >= 0.9: filled, stopped
    assert int(out["steps"]) == 1 == int(out["nfe"]) and np.all(out["eos_stopped"])
    assert out["stop_filled"].tolist() == [10] * B == out["eos_filled"].tolist()
    assert np.all(out["tokens"][:, 2:] == ids.eos)
    assert np.array_equal(out["tokens"][:, :2], rows[:, :2]) and np.all(out["committed_at"][:, 2:] == 0)
    # (ignore_eos: the filter's own stop; by default an EOS committed at step 0 ends the text there)
    # the filter accepts only positions < 2.78 blocks ahead (logit 30 - 10 * block_position): at step 0
    # the last block is 3 blocks ahead, so no stop; at step 1 (block 1) everything left passes
    near = write_filter(tmp_path / "near", features=("block_position",), w0=[-10.0], b2=30.0)
    out = _learned(eos_model, cfg, rows, 0, near, steps=8, block_length=4, ignore_eos=True)
    assert int(out["steps"]) == 2 and out["stop_filled"].tolist() == [6] * B and np.all(out["complete"])
    ref = reference(eos_model, cfg, rows, 0, near, 8, 4)
    assert np.array_equal(out["committed_at"], ref["committed_at"]) and ref["eos_filled"].tolist() == [6] * B
    # --no-eos-stop: the same decode without the stop spends a step on each of the four blocks
    off = _learned(eos_model, cfg, rows, 0, near, steps=8, block_length=4, ignore_eos=True, eos_stop=False)
    assert int(off["steps"]) == 4 and not np.any(off["eos_stopped"]) and np.all(off["complete"])
    assert np.array_equal(off["tokens"], out["tokens"])
    # a model predicting a letter never stops early: one step per block
    letter = _learned(_end_model(cfg, params, 97), cfg, rows, 0, yes, steps=8, block_length=4)
    assert int(letter["steps"]) == 4 and not np.any(letter["eos_stopped"])
    assert np.all(letter["tokens"][:, 2:] == 97)
    # and a filter that rejects EOS predictions (logit 30 - 60 is_end) never stops either
    no_end = write_filter(tmp_path / "no_end", features=("is_end",), w0=[-60.0], b2=30.0)
    out = _learned(eos_model, cfg, rows, 0, no_end, steps=8, block_length=4, ignore_eos=True)
    assert int(out["steps"]) == 8 and not np.any(out["eos_stopped"]) and np.all(out["complete"])
    # without ignore_eos its forced first commit (EOS at position 2) ends the text by the fill after
    # EOS: counted in eos_filled like every masked sampler's, not in stop_filled and eos_stopped
    out = _learned(eos_model, cfg, rows, 0, no_end, steps=8, block_length=4)
    assert int(out["steps"]) == 1 and out["eos_filled"].tolist() == [13] * B
    assert out["stop_filled"].tolist() == [0] * B and not np.any(out["eos_stopped"])


# ----------------------------------------------------------------------------- every masked sampler

def test_fixed_tokens_never_change_and_every_mask_is_filled_under_every_masked_sampler(peaked, tmp_path):
    cfg, params = peaked
    mask_id = special_ids(cfg.model).mask
    rows = np.tile(parse_template("a[MASK:3]b c[MASK:5]!", TOK), (2, 1))
    fixed = rows != mask_id
    path = write_filter(tmp_path, commit_filter.FEATURES, cfg.model.d_model, units=4, seed=5)
    guide_cfg = config_lib.load(None, (*TINY_MDM, "objective.name=l2r"))
    guide = sampling.Companion(guide_cfg, model.init_params(guide_cfg.model, jax.random.key(1)), "guide")
    needs = {"learned": ({"commit_filter": str(path)}, None),  # the settings a sampler cannot go without
             "guided": ({"guide": "guide"}, {"guide": guide})}
    names = [s.name for s in sampling.for_config(cfg)]
    assert "learned" in names
    for name in names:
        given, companions = needs.get(name, ({}, None))
        out = jax.device_get(sample(params, cfg, rows, jax.random.key(1), name,
                                    SamplerOptions(steps=4, block_length=3, **given), companions))
        assert np.array_equal(out["tokens"][fixed], rows[fixed]), f"{name} changed a fixed token"
        assert not np.any(out["tokens"] == mask_id) and np.all(out["complete"]), f"{name} left a mask"
        assert np.all(out["committed_at"][fixed] == -1), name
        assert np.all(np.isfinite(out["uncertainty"])) and np.all(out["uncertainty"] > 0), name


# ----------------------------------------------------------------------------- errors

def test_one_line_errors(peaked, tmp_path):
    cfg, params = peaked
    rows = _rows(cfg)

    def error(path=None, **options):
        opts = SamplerOptions(**({"commit_filter": str(path)} if path else {}), **options)
        with pytest.raises(ConfigError) as e:
            sample(params, cfg, rows, jax.random.key(0), "learned", opts)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "train-filter RUN_DIR TRACES" in error()
    assert "no commit filter at" in error(tmp_path / "nowhere")
    wrong = write_filter(tmp_path / "wrong", ("confidence", "hidden"), hidden_size=16)
    assert "d_model=32" in error(wrong)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / commit_filter.FILTER_FILE).write_text("format: 1\nweights: x.npz\n"
                                                               "features: [colour]\n")
    assert "unknown filter features" in error(tmp_path / "bad")
    shapes = write_filter(tmp_path / "shapes", units=2)
    meta = yaml.safe_load(shapes.read_text())
    shapes.write_text(yaml.safe_dump({**meta, "hidden_units": 3}))
    assert "has shape" in error(shapes)
    assert "filter_threshold" in error(write_filter(tmp_path / "ok"), filter_threshold=0.0)
    with pytest.raises(ConfigError, match="does not take 'threshold'"):
        sample(params, cfg, rows, jax.random.key(0), "learned", SamplerOptions(threshold=0.5))


# ----------------------------------------------------------------------------- CLI end to end

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, repeated_corpus):
    run = tmp_path_factory.mktemp("learned") / "mdm"
    train_on_corpus(run, (*TINY, "objective.name=mdm"), repeated_corpus, steps=10)
    return run


def test_cli_record_train_filter_and_sample_learned(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    template = "the [MASK:3] sat on [MASK:4] mat"
    base = ["sample", run, "--template", template, "--steps", "7", "--num-samples", "4", "--seed", "1",
            "--json"]
    code, _, err = cli_in_process(["sample", run, "--sampler", "learned", "--template", template])
    assert code == 2 and err.strip().count("\n") == 0 and "jaxorder train-filter RUN_DIR TRACES" in err
    traces = tmp_path / "t.npz"
    code, out, _ = cli_in_process([*base, "--record-traces", traces])
    assert code == 0
    recorded = json.loads(out)
    assert recorded["traces"]["path"] == str(traces) and recorded["traces"]["rows"] > 0
    code, out, _ = cli_in_process(base)
    assert code == 0 and [s["tokens"] for s in json.loads(out)["samples"]] == [s["tokens"] for s in
                                                                              recorded["samples"]]
    code, out, err = cli_in_process(["train-filter", run, traces, "--steps", "30", "--hidden", "8", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["filter"] == str(run / commit_filter.FILTER_FILE) and "train-filter: step 30/30" in err
    meta = yaml.safe_load((run / commit_filter.FILTER_FILE).read_text())
    assert meta["traces"]["options"]["steps"] == 7 and meta["metrics"]["held_out"]["rows"] > 0
    with np.load(run / "commit_filter.npz", allow_pickle=False) as data:
        assert data["w1"].shape == (meta["width"], 8)
    code, out, err = cli_in_process(["sample", run, "--sampler", "learned", "--template", template,
                                     "--steps", "7", "--num-samples", "2", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["complete"] and res["commit_filter"] == str(run / commit_filter.FILTER_FILE)
    assert all(s["text"].startswith("the ") and s["text"].endswith(" mat") and "eos_stopped" in s
               for s in res["samples"])
    code, _, err = cli_in_process(["sample", run, "--sampler", "learned", "--commit-filter",
                                   tmp_path / "none"])
    assert code == 2 and "no commit filter at" in err and err.strip().count("\n") == 0
    code, _, err = cli_in_process(["train-filter", run, tmp_path / "missing.npz"])
    assert code == 2 and "no trace file" in err
    code, _, err = cli_in_process([*base, "--approx-cache", "dual", "--record-traces", traces])
    assert code == 2 and "drop --approx-cache" in err
