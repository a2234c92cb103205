"""Decoding traces (jaxorder/sampling/traces.py), the commit filter's files (sampling/commit_filter.py)
and its training (jaxorder/evaluation/filter_training.py).

Traces are recorded from the tiny random mdm model with a scaled head (peaked distributions) and
checked against what the decode itself says: which positions were masked in which block at each
step, what was committed when, and features recomputed by hand from separate model calls. The
training is checked on synthetic separable data (linear and XOR), for determinism and for its
files (numpy without pickle, yaml.safe_load), and for transfer to another length and step budget.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import ConfigError
from jaxorder.evaluation.filter_training import auc, fit, metrics, train_filter
from jaxorder.objectives.common import special_ids
from jaxorder.objectives.mdm import masked_log_probs
from jaxorder.sampling import SamplerOptions, commit_filter, resolve, sample, traces
from jaxorder.sampling.mdm import final_hidden

TINY_MDM = ("objective.name=mdm", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "data.seq_len=32")
B, L, PROMPT, BLOCK, STEPS = 4, 16, 3, 4, 8


@pytest.fixture(scope="module")
def peaked():
    cfg = config_lib.load(None, TINY_MDM)
    params = model.init_params(cfg.model, jax.random.key(0))
    return cfg, dict(params, head=params["head"] * 30.0)


def _rows(cfg, batch=B, length=L, prompt=PROMPT):
    rows = np.full((batch, length), special_ids(cfg.model).mask, np.int32)
    rows[:, :prompt] = np.arange(batch * prompt).reshape(batch, prompt) % 26 + 97
    return rows


@pytest.fixture(scope="module")
def recorded(peaked):
    """A confidence decode (blocks of 4, 8 steps for 13 positions: 1 or 2 commits per step), traced."""
    cfg, params = peaked
    rows = _rows(cfg)
    options = SamplerOptions(steps=STEPS, block_length=BLOCK, temperature=1.0)
    out, trace = traces.sample_and_record(params, cfg, rows, jax.random.key(7), "confidence", options)
    return cfg, params, rows, options, out, trace


def _run_dir(tmp_path, cfg, name="run"):
    """A run directory as far as train-filter reads it: its config.yaml."""
    run = tmp_path / name
    run.mkdir()
    config_lib.save(cfg, run / "config.yaml")
    return run


# ----------------------------------------------------------------------------- traces

def test_recording_does_not_change_samples_and_rows_are_the_blocks_masked_positions(recorded):
    cfg, params, rows, options, out, trace = recorded
    plain = jax.device_get(sample(params, cfg, rows, jax.random.key(7), "confidence", options))
    assert np.array_equal(out["tokens"], plain["tokens"]) and np.array_equal(out["committed_at"],
                                                                              plain["committed_at"])
    at, final = out["committed_at"], out["tokens"]
    generated = rows == special_ids(cfg.model).mask
    block = np.where(np.arange(L) >= PROMPT, (np.arange(L) - PROMPT) // BLOCK, -1)
    n = len(trace["label"])
    assert {k: v.shape for k, v in trace.items()} == {
        **{k: (n,) for k in ("sample", "step", "step_in_block", "position", "prediction", "final", "label")},
        "scalars": (n, len(commit_filter.SCALAR_FEATURES)), "hidden": (n, cfg.model.d_model)}
    assert trace["scalars"].dtype == np.float32 and trace["label"].dtype == bool
    for j in range(int(out["steps"])):
        # the block the step committed in (the confidence rule commits at least one per step)
        current = np.broadcast_to(block, at.shape)[at == j][0]
        want = {(b, p) for b, p in zip(*np.nonzero(generated & (at >= j) & (block == current)))}
        got = trace["step"] == j
        assert set(zip(trace["sample"][got].tolist(), trace["position"][got].tolist())) == want, j
    assert np.array_equal(trace["final"], final[trace["sample"], trace["position"]])
    assert np.array_equal(trace["label"], trace["prediction"] == trace["final"])
    committed_now = at[trace["sample"], trace["position"]] == trace["step"]
    assert committed_now.sum() == generated.sum() and np.all(trace["label"][committed_now]), \
        "a position committed at a step must have its final token as that step's prediction"
    assert 0 < trace["label"].mean() < 1


def test_fixed_noise_traces_replay_the_decodes_noise(peaked):
    """With --fixed-noise the replay draws with the decode's key at every step, so each commit's row
    still has its final token as prediction; replayed with per-step keys, some would not. Unscaled
    head: the draws depend on the noise."""
    cfg, peaked_params = peaked
    params = dict(peaked_params, head=peaked_params["head"] / 30.0)
    rows = _rows(cfg)
    options = SamplerOptions(steps=STEPS, block_length=BLOCK, temperature=1.0, fixed_noise=True)
    key = jax.random.key(3)
    out, trace = traces.sample_and_record(params, cfg, rows, key, "confidence", options)
    generated = rows == special_ids(cfg.model).mask
    committed_now = out["committed_at"][trace["sample"], trace["position"]] == trace["step"]
    assert committed_now.sum() == generated.sum() and np.all(trace["label"][committed_now])
    fresh = traces.record(params, cfg, rows, out, key, SamplerOptions(steps=STEPS, block_length=BLOCK))
    assert not np.all(fresh["label"][committed_now])
    assert traces.trace_header(trace, cfg, "confidence", options, L, B)["options"]["fixed_noise"] is True


def test_trace_features_by_hand(recorded):
    """Each scalar column and the hidden state at step 3, from separate model calls in numpy."""
    cfg, params, rows, options, out, trace = recorded
    mask_id = special_ids(cfg.model).mask
    at, j = out["committed_at"], 3
    x = np.where((rows == mask_id) & (at >= j), mask_id, out["tokens"])
    logp = np.asarray(masked_log_probs(params, jnp.asarray(x), cfg), np.float64)
    hidden = np.asarray(final_hidden(params, jnp.asarray(x), cfg))
    sel = trace["step"] == j
    b, pos, tok = trace["sample"][sel], trace["position"][sel], trace["prediction"][sel]
    p = np.exp(logp[b, pos])
    top2 = np.sort(p, axis=-1)[:, ::-1]
    lo = PROMPT + BLOCK * ((pos[0] - PROMPT) // BLOCK)
    first = int(np.min(trace["step"][trace["position"] >= lo]))  # the block's first step
    generated, masked = rows == mask_id, (rows == mask_id) & (at >= j)
    in_block = (np.arange(L) >= lo) & (np.arange(L) < lo + BLOCK)
    want = {"confidence": p[np.arange(len(b)), tok], "margin": top2[:, 0] - top2[:, 1],
            "entropy": -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1),
            "is_end": np.isin(tok, [special_ids(cfg.model).eos, special_ids(cfg.model).pad]),
            "filled": 1 - masked.sum(1)[b] / generated.sum(1)[b],
            "block_filled": 1 - (masked & in_block).sum(1)[b] / (generated & in_block).sum(1)[b],
            "progress": np.full(len(b), (j - first) / 2),  # 8 steps over 4 blocks: 2 each
            "block_position": (pos - lo) / BLOCK}
    for i, name in enumerate(commit_filter.SCALAR_FEATURES):
        np.testing.assert_allclose(trace["scalars"][sel][:, i], want[name], atol=2e-5, err_msg=name)
    np.testing.assert_allclose(trace["hidden"][sel], hidden[b, pos], atol=1e-5)
    assert np.all(trace["step_in_block"][sel] == j - first)


def test_trace_file_round_trip_without_pickle(recorded, tmp_path):
    cfg, _, _, options, _, trace = recorded
    header = traces.trace_header(trace, cfg, "confidence", options, L, B, run="x")
    path = traces.save(tmp_path / "t.npz", trace, header)
    with np.load(path, allow_pickle=False) as data:  # plain arrays and a JSON string: no pickle needed
        assert set(data.files) == {"header", *traces.COLUMNS}
    loaded, loaded_header = traces.load(path)
    assert loaded_header == header and header["options"]["steps"] == STEPS
    assert header["rows"] == len(trace["label"])
    assert all(np.array_equal(loaded[k], trace[k]) for k in traces.COLUMNS)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a trace file"):
        traces.load(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="drop --remask"):
        traces.check_recordable(resolve(cfg, "confidence"), SamplerOptions(remask=0.5))


# ----------------------------------------------------------------------------- training

def test_auc_counts_pairs_and_ties_half():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.uniform(size=60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    want = np.mean([(a > c) + 0.5 * (a == c) for a in pos for c in neg])
    assert auc(scores, labels) == pytest.approx(want, abs=1e-12)
    assert auc(scores, np.zeros(60, bool)) is None


def test_fit_separates_linear_and_xor_cases():
    """A broken loss or gradient (sign, missing ReLU, standardization) fails one of these."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 4)).astype(np.float32) * [1.0, 5.0, 0.2, 1.0] + [0.0, 3.0, -1.0, 10.0]
    linear = ((x[:, 0] - 0.2 * (x[:, 1] - 3.0) + 4.0 * (x[:, 2] + 1.0)) > 0).astype(np.float32)
    arrays = fit(x[:2000], linear[:2000], hidden_units=0, steps=400, seed=0)
    assert metrics(arrays, x[2000:], linear[2000:])["accuracy"] > 0.97
    xor = ((x[:, 0] > 0) ^ (x[:, 1] > 3.0)).astype(np.float32)
    arrays = fit(x[:2000], xor[:2000], hidden_units=16, steps=600, seed=0)
    held = metrics(arrays, x[2000:], xor[2000:])
    assert held["accuracy"] > 0.93 and held["auc"] > 0.97
    assert metrics(fit(x[:2000], xor[:2000], 0, 300, 0), x[2000:], xor[2000:])["accuracy"] < 0.7, \
        "XOR is not linearly separable: the hidden layer must be what fits it"


def test_training_is_deterministic_and_its_files_load_with_numpy_and_safe_load(recorded, tmp_path):
    cfg, _, _, options, _, trace = recorded
    header = traces.trace_header(trace, cfg, "confidence", options, L, B)
    path = traces.save(tmp_path / "t.npz", trace, header)
    run = _run_dir(tmp_path, cfg)
    a = train_filter(run, path, out=tmp_path / "a", steps=40, hidden=8, seed=3, log=None)
    b = train_filter(run, path, out=tmp_path / "b", steps=40, hidden=8, seed=3, log=None)
    c = train_filter(run, path, out=tmp_path / "c", steps=40, hidden=8, seed=4, log=None)
    arrays = {}
    for name in "abc":
        meta = yaml.safe_load((tmp_path / name / commit_filter.FILTER_FILE).read_text())
        with np.load(tmp_path / name / meta["weights"], allow_pickle=False) as data:
            arrays[name] = {k: data[k] for k in data.files}
        assert meta["features"] == list(commit_filter.FEATURES) and meta["hidden_units"] == 8
        assert meta["traces"]["options"]["steps"] == STEPS and meta["training"]["seed"] in (3, 4)
    assert all(np.array_equal(arrays["a"][k], arrays["b"][k]) for k in commit_filter.ARRAYS)
    assert a["metrics"] == b["metrics"]
    assert not np.array_equal(arrays["a"]["w1"], arrays["c"]["w1"]) and c["metrics"] != a["metrics"]
    filt = commit_filter.load(tmp_path / "a")
    assert filt.features == commit_filter.FEATURES and filt.hidden_size == cfg.model.d_model
    default = train_filter(run, path, steps=5, hidden=0, features="margin,confidence", log=None)
    assert default["filter"] == str(run / commit_filter.FILTER_FILE)
    assert commit_filter.load(run).features == ("confidence", "margin")


def test_train_filter_errors(recorded, tmp_path):
    cfg, _, _, options, _, trace = recorded
    header = traces.trace_header(trace, cfg, "confidence", options, L, B)
    path = traces.save(tmp_path / "t.npz", trace, header)
    run = _run_dir(tmp_path, cfg)

    def error(run_dir=run, traces_path=path, **kw) -> str:
        with pytest.raises(ConfigError) as e:
            train_filter(run_dir, traces_path, log=None, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "not a run directory" in error(tmp_path / "nowhere")
    assert "unknown filter feature 'colour'" in error(features="confidence,colour")
    assert "--steps must be >= 1" in error(steps=0)
    wide = _run_dir(tmp_path, config_lib.load(None, (*TINY_MDM, "model.d_model=64")), "wide")
    assert "d_model=64" in error(wide)
    train_filter(wide, path, features="confidence,margin", steps=2, log=None)  # no hidden: any width
    l2r = _run_dir(tmp_path, config_lib.load(None, ("objective.name=l2r",)), "l2r")
    assert "masked-diffusion runs" in error(l2r)
    same = dict(trace, label=np.ones_like(trace["label"]))
    one = traces.save(tmp_path / "one.npz", same, traces.trace_header(same, cfg, "confidence", options, L, B))
    assert "all have label 1" in error(traces_path=one)


def test_filter_transfers_to_another_length_and_step_budget(peaked, tmp_path):
    """Trained on one-token-per-step traces at 16 positions, scored on traces at 24 positions with
    two commits per step in blocks of 8 (another base rate: ranking transfers, calibration need not),
    and used there by the learned sampler. The scalar features only: on 8 samples of this random
    model the hidden state overfits."""
    cfg, params = peaked
    run = _run_dir(tmp_path, cfg)
    key = jax.random.key(3)
    short = SamplerOptions(steps=L - PROMPT, temperature=1.0)
    _, train_trace = traces.sample_and_record(params, cfg, _rows(cfg, batch=8), key, "confidence", short)
    train_path = traces.save(tmp_path / "short.npz", train_trace,
                             traces.trace_header(train_trace, cfg, "confidence", short, L, 8))
    long_rows = _rows(cfg, batch=8, length=24, prompt=4)
    long = SamplerOptions(steps=10, block_length=8, temperature=1.0)
    _, other = traces.sample_and_record(params, cfg, long_rows, key, "confidence", long)
    other_path = traces.save(tmp_path / "long.npz", other,
                             traces.trace_header(other, cfg, "confidence", long, 24, 8))
    summary = train_filter(run, train_path, steps=300, hidden=8, eval_traces=other_path, log=None,
                           features=",".join(commit_filter.SCALAR_FEATURES))
    held, moved = summary["metrics"]["held_out"], summary["eval"]["metrics"]
    assert held["auc"] > 0.75 and moved["auc"] > 0.75, (held, moved)
    assert summary["eval"]["traces"]["length"] == 24 and summary["traces"]["length"] == L
    out = jax.device_get(sample(params, cfg, long_rows, key, "learned",
                                SamplerOptions(steps=20, block_length=8, commit_filter=str(run))))
    assert np.all(out["complete"]) and int(out["nfe"]) < 20
