"""Mixtures of orders, loss profiles and gradient SNR (jaxorder/experiments/analysis/{mixtures,
loss_profile,grad_snr,profiles}.py): the K-order bound against brute force over all 24 orders of n = 4,
Kendall tau, the per-position curves against the sequence NLL, mask-rate bins, the SNR formula against
an independent covariance computation, and `jaxorder analyze mixtures|loss-profile|grad-snr` end to end."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import cli
from jaxorder import config as config_lib
from jaxorder.evaluation.fixed_orders import parse_orders, score_orders
from jaxorder.experiments.analysis import grad_snr, loss_profile, mixtures
from jaxorder.objectives import l2r, mdm, r2l
from jaxorder.training.optimizer import make_optimizer
from jaxorder.training.state import init_state

N = 4


def tiny(objective: str, seq_len: int = N):
    cfg = config_lib.load(None, [f"objective.name={objective}", "model.d_model=16", "model.n_layers=1",
                                 "model.n_heads=2", "model.max_len=16", f"data.seq_len={seq_len}"])
    params = init_state(cfg, make_optimizer(cfg))["params"]
    # larger random weights, so that the orders' likelihoods differ clearly
    return cfg, jax.tree_util.tree_map(lambda w: w * 4.0, params)


@pytest.fixture(scope="module")
def all_orders_mdm():
    """A random-weight mdm on one window of n = 4 and l = log p(x | sigma) for all 24 orders."""
    cfg, params = tiny("mdm")
    x_1N = np.array([[5, 17, 99, 3]], np.int32)
    orders = np.array(list(itertools.permutations(range(N))), np.int32)
    l_O = -np.asarray(mdm.chain_rule_nll(params, jnp.asarray(np.repeat(x_1N, len(orders), 0)),
                                         jnp.asarray(orders), cfg), np.float64)
    return cfg, params, x_1N, orders, l_O


# ----------------------------------------------------------------------------- mixtures

def test_k1_bound_is_the_single_order_nll_and_groups_are_disjoint():
    l_WM = np.array([[-3.0, -5.0, -4.0, -9.0]])
    b = mixtures.mixture_bounds(l_WM, [1, 2, 4])
    np.testing.assert_allclose(b[1], [5.25])  # mean of the four single-order NLLs
    pair = lambda a, c: -(np.logaddexp(a, c) - math.log(2))  # noqa: E731
    np.testing.assert_allclose(b[2], [(pair(-3, -5) + pair(-4, -9)) / 2])
    np.testing.assert_allclose(b[4], [-(np.logaddexp.reduce(l_WM[0]) - math.log(4))])
    l_WM1 = np.array([[-7.5], [-2.0]])
    np.testing.assert_allclose(mixtures.mixture_bounds(l_WM1, [1])[1], [7.5, 2.0])


def test_bound_in_expectation_non_increasing_in_k_and_tends_to_all_order_mixture(all_orders_mdm):
    """Brute force: E over iid draws of K of the 24 orders of the K-order bound, by Monte Carlo."""
    *_, l_O = all_orders_mdm
    assert l_O.std() > 0.3, "orders should differ for the test to have power"
    exact_mix = -(np.logaddexp.reduce(l_O) - math.log(len(l_O)))  # -log p_mix(x)
    rng = np.random.default_rng(0)
    means, ses = {}, {}
    for k in (1, 2, 4, 8, 16):
        draws = 4000
        b = mixtures.mixture_bounds(l_O[rng.integers(0, len(l_O), size=(draws, k))], [k])[k]
        means[k], ses[k] = b.mean(), b.std(ddof=1) / math.sqrt(draws)
    np.testing.assert_allclose(means[1], -l_O.mean(), atol=4 * ses[1])
    for k in (1, 2, 4, 8):
        assert means[k] >= means[2 * k] - 3 * math.hypot(ses[k], ses[2 * k]), (k, means)
    assert means[1] - means[16] > 10 * ses[1]  # it does tighten here
    big = mixtures.mixture_bounds(l_O[rng.integers(0, len(l_O), size=(20, 20000))], [20000])[20000]
    np.testing.assert_allclose(big.mean(), exact_mix, atol=0.02)
    assert (big >= exact_mix - 0.05).all()


def test_order_log_likelihoods_and_table_through_the_scorer(all_orders_mdm):
    cfg, params, x_1N, orders, l_O = all_orders_mdm
    l_WM, orders_WML = mixtures.order_log_likelihoods(params, cfg, np.repeat(x_1N, 2, 0), 8,
                                                      jax.random.key(1), rows_per_call=5)
    assert l_WM.shape == (2, 8) and orders_WML.shape == (2, 8, N)
    index = {tuple(o): i for i, o in enumerate(orders.tolist())}
    expected = np.array([[l_O[index[tuple(o)]] for o in row] for row in orders_WML.tolist()])
    np.testing.assert_allclose(l_WM, expected, rtol=1e-5)  # each row scored under its own order
    table = mixtures.mixture_table(l_WM, orders_WML, [1, 2, 8])
    np.testing.assert_allclose(table["bound_nats_per_token"]["1"]["mean"], -l_WM.mean() / N, rtol=1e-6)
    assert 1.0 <= table["effective_orders"]["mean"] <= 8.0
    best = orders_WML[0, np.argmax(l_WM[0])]
    assert table["best_order_kendall_tau"]["per_window"][0] == mixtures.kendall_tau(best)


def test_kendall_tau_and_effective_orders():
    assert mixtures.kendall_tau(np.arange(7)) == 1.0
    assert mixtures.kendall_tau(np.arange(7)[::-1]) == -1.0
    assert mixtures.kendall_tau(np.array([1, 0, 2])) == pytest.approx(1 / 3)  # 2 of 3 pairs concordant
    np.testing.assert_allclose(mixtures.effective_orders(np.zeros((1, 8))), [8.0])
    np.testing.assert_allclose(mixtures.effective_orders(np.array([[0.0, -200.0, -300.0]])), [1.0])
    np.testing.assert_allclose(mixtures.effective_orders(np.array([[0.0, 0.0, -300.0, -400.0]])), [2.0])


def test_mdm_eval_reports_logmeanexp_rows():
    cfg, params = tiny("mdm", 8)
    batches = [np.asarray(jax.random.randint(jax.random.key(i), (2, 8), 0, 256)) for i in range(2)]
    scores = score_orders(params, cfg, batches, 1.0, parse_orders("l2r,random:3"))
    assert set(scores) == {"l2r", "random:3", "logmeanexp:3"}
    assert scores["logmeanexp:3"]["bpb"] <= scores["random:3"]["bpb"] + 1e-6


@pytest.mark.parametrize("bad", ["", "0,4", "3,4", "a,b"])
def test_parse_ks_rejects_bad_lists(bad):
    with pytest.raises(config_lib.ConfigError, match="--ks"):
        mixtures.parse_ks(bad)


# ----------------------------------------------------------------------------- loss profiles

def test_position_curves_sum_to_the_sequence_nll():
    tokens_BL = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 8)), jnp.int32)
    for name, module in (("l2r", l2r), ("r2l", r2l)):
        cfg, params = tiny(name, 8)
        curve = module.position_nll(params, tokens_BL, jax.random.key(0), cfg)[name]
        expected = module.nll(params, {"tokens": tokens_BL}, None, cfg)
        np.testing.assert_allclose(curve.sum(1), expected, rtol=1e-5)
    cfg, params = tiny("mdm", 8)
    curves = mdm.position_nll(params, tokens_BL, jax.random.key(0), cfg)
    ident = jnp.broadcast_to(jnp.arange(8), (3, 8))
    for name, orders in (("l2r", ident), ("r2l", ident[:, ::-1])):
        np.testing.assert_allclose(curves[name].sum(1), mdm.chain_rule_nll(params, tokens_BL, orders, cfg),
                                   rtol=1e-5)
    # each value sits at its position: r2l reveals position 0 last and l2r position 7 last, both
    # seeing every other token (a curve stored in reveal-step order fails here)
    mask_id = cfg.model.vocab_size - 3
    for name, pos in (("r2l", 0), ("l2r", 7)):
        x_t = tokens_BL.at[:, pos].set(mask_id)
        last = -mdm.masked_log_probs(params, x_t, cfg)[jnp.arange(3), pos, tokens_BL[:, pos]]
        np.testing.assert_allclose(curves[name][:, pos], last, rtol=1e-5)


def test_mask_rate_bins_cover_all_draws():
    assert loss_profile.bin_index(np.array([0.0, 0.0999, 0.1, 0.95, 1.0]), 10).tolist() == [0, 0, 1, 9, 9]
    cfg, params = tiny("mdm", 8)
    windows = np.random.default_rng(1).integers(0, 256, (5, 8)).astype(np.int32)
    rows = loss_profile.mask_rate_profile(params, cfg, windows, draws=6, bins=4, seed=0, batch=2)
    assert len(rows) == 4 and sum(r["pairs"] for r in rows) == 6 * 5
    assert all(r["masked_tokens"] <= 8 * r["pairs"] for r in rows)
    high, low = rows[-1], rows[0]
    assert high["masked_tokens"] / max(high["pairs"], 1) > low["masked_tokens"] / max(low["pairs"], 1)


# ----------------------------------------------------------------------------- gradient SNR

def test_gradient_snr_closed_form_and_against_covariance():
    mu, v = np.array([3.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    g = np.stack([mu + (-1) ** i * v for i in range(8)])
    r = grad_snr.gradient_snr(g)
    assert r["snr"] == pytest.approx(1.5) and r["mean_norm"] == pytest.approx(3.0) and r["spread"] == 2.0
    # through jax.grad: a linear loss w . mean(batch) has gradient mean(batch), one per batch
    batches = [np.random.default_rng(i).normal(1.0, 2.0, (4, 5)) for i in range(32)]
    loss = lambda p, t, rng: jnp.sum(p["w"] * t.mean(0)) + 0.0 * p["b"]  # noqa: E731
    grads = grad_snr.batch_gradients(loss, {"w": jnp.zeros(5), "b": jnp.zeros(())}, batches, 0)
    expected = np.stack([np.concatenate([[0.0], b.mean(0)]) for b in batches])  # ravel order: b, w
    np.testing.assert_allclose(grads, expected, rtol=1e-5, atol=1e-6)
    cov_trace = np.trace(np.cov(expected.T, bias=True))
    snr = np.linalg.norm(expected.mean(0)) / math.sqrt(cov_trace)
    assert grad_snr.gradient_snr(grads)["snr"] == pytest.approx(snr, rel=1e-5)


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """A 10-step mdm run (checkpoints 5 and 10) and a copy relabelled l2r (same parameter tree)."""
    from jaxorder.training.loop import train

    root = tmp_path_factory.mktemp("mixture_runs")
    corpus = root / "corpus.txt"
    corpus.write_text("the king and the queen rode to the castle by the river at night.\n" * 60)
    cfg = config_lib.load(None, [
        "objective.name=mdm", "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "data.source=text",
        f"data.path={corpus}", "data.seq_len=16", "data.batch_size=4", "optimizer.warmup_steps=2",
        "train.steps=10", "train.log_every=10", "train.eval_every=10", "train.checkpoint_every=5",
        "train.async_checkpointing=false", "eval.batches=1", "eval.mdm_time_samples=1"])
    with contextlib.redirect_stderr(io.StringIO()):
        train(cfg, root / "mdm")
    shutil.copytree(root / "mdm", root / "l2r")
    config_lib.save(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="l2r")),
                    root / "l2r" / "config.yaml")
    return {"mdm": root / "mdm", "l2r": root / "l2r"}


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow  # ~30 s alone, more on a shared machine (a training run and many compilations)
def test_cli_mixtures_loss_profile_grad_snr(tiny_runs, tmp_path, capsys):
    code, out, err = _main(["analyze", "mixtures", tiny_runs["mdm"], "--ks", "1,2,4", "--windows", "3",
                            "--out", tmp_path / "m", "--json"], capsys)
    assert code == 0, err
    m = json.loads(out)
    assert m["orders"] == 4 and m["windows"] == 3 and list(m["bound_nats_per_token"]) == ["1", "2", "4"]
    assert (tmp_path / "m" / "mixtures.png").stat().st_size > 0
    code, out, err = _main(["analyze", "loss-profile", tiny_runs["mdm"], "--windows", "4", "--draws", "2",
                            "--bins", "5", "--out", tmp_path / "p", "--json"], capsys)
    assert code == 0, err
    p = json.loads(out)
    assert sum(r["pairs"] for r in p["by_mask_rate"]) == 8 and set(p["by_position"]) == {"l2r", "r2l"}
    assert len(p["by_position"]["l2r"]["mean"]) == 16
    for name in ("loss_by_mask_rate.png", "loss_by_position.png", "loss-profile.json"):
        assert (tmp_path / "p" / name).stat().st_size > 0, name
    code, out, err = _main(["analyze", "grad-snr", tiny_runs["mdm"], "--batches", "3", "--bins", "2",
                            "--out", tmp_path / "g", "--json"], capsys)
    assert code == 0, err
    g = json.loads(out)
    assert list(g["by_step"]) == ["5", "10"]
    assert all(len(r["by_mask_rate"]) == 2 and r["loss"]["snr"] > 0 for r in g["by_step"].values())
    code, out, err = _main(["analyze", "loss-profile", tiny_runs["l2r"], "--windows", "2", "--out",
                            tmp_path / "l", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["by_mask_rate"] is None and not (tmp_path / "l" / "loss_by_mask_rate.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["mixtures", "l2r", "--ks", "1,4"], "fixed-order scoring needs a run of"),
    (["mixtures", "mdm", "--ks", "3,4"], "--ks '3,4'"),
    (["grad-snr", "mdm", "--batches", "1"], "--batches must be >= 2"),
])
def test_cli_bad_input_is_one_line_error(argv, expected, tiny_runs, tmp_path, capsys):
    code, _, err = _main(["analyze", argv[0], tiny_runs[argv[1]], *argv[2:], "--out", tmp_path / "o"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
