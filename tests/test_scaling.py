"""Compute scaling (power-law fit, compute multiplier, compute-optimal steps), the judge's standard error
and the standard-error columns of the sweep report."""
import csv
import json
import math

import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder.evaluation.sample_quality import ratio_stderr
from jaxorder.experiments import report, scaling


@pytest.mark.parametrize("a, alpha, L_inf", [(300.0, 0.2, 1.5), (2000.0, 0.3, 0.8), (3e6, 0.5, 2.0)])
def test_power_law_fit_recovers_synthetic_parameters(a, alpha, L_inf):
    """6 compute points over 4 decades, 0.2 % multiplicative noise: the fit recovers alpha and L_inf
    (catches a wrong sign of alpha, fitting log L instead of L, or a bound that pins L_inf)."""
    rng = np.random.default_rng(1)
    C = np.logspace(12, 16, 6)
    L = scaling.power_law(C, a, alpha, L_inf) * (1 + 0.002 * rng.standard_normal(6))
    fa, falpha, fL = scaling.fit_power_law(C, L)
    assert falpha == pytest.approx(alpha, rel=0.1) and fL == pytest.approx(L_inf, abs=0.05)
    assert fa == pytest.approx(a, rel=0.6)  # a trades off against alpha; the curve itself is tight
    np.testing.assert_allclose(scaling.power_law(C, fa, falpha, fL), L, rtol=0.01)


def test_compute_multiplier_of_shifted_curves():
    """mdm's curve = l2r's with 16x the compute: L_m(C) = L_l(C / 16), i.e. a_m = a_l 16^alpha. Fitted
    from noiseless points of each, the multiplier at l2r's loss at its largest C is 16."""
    C = np.logspace(13, 17, 5)
    l2r = (200.0, 0.25, 1.2)
    mdm = (200.0 * 16 ** 0.25, 0.25, 1.2)
    fits = [scaling.fit_power_law(C, scaling.power_law(C, *p)) for p in (l2r, mdm)]
    target = float(scaling.power_law(C[-1], *fits[0]))
    assert scaling.compute_multiplier(fits[0], fits[1], target) == pytest.approx(16.0, rel=1e-3)
    assert scaling.compute_at(l2r, 1.2) == math.inf  # at or below L_inf: never reached
    assert scaling.compute_at(l2r, float(scaling.power_law(1e15, *l2r))) == pytest.approx(1e15)


def test_multiplier_interval_covers_the_truth_and_shrinks_with_the_errors():
    """The bootstrap interval of the 16x pair above: with tiny errors it is tight around 16, with
    larger ones it widens and still contains 16 (a bug that ignores the errors, or refits only one
    curve, keeps it at a point or moves it off 16)."""
    C = np.logspace(13, 17, 5)
    curves = [(200.0, 0.25, 1.2), (200.0 * 16 ** 0.25, 0.25, 1.2)]
    series = [lambda se, p=p: {"C": C, "L": scaling.power_law(C, *p), "stderr": np.full(5, se)}
              for p in curves]
    tight = scaling.multiplier_interval(series[0](1e-6), series[1](1e-6), draws=40)
    wide = scaling.multiplier_interval(series[0](1e-3), series[1](1e-3), draws=40)
    assert 15.5 < tight[0] <= tight[1] < 16.5
    assert wide[0] < 16.0 < wide[1]
    assert wide[1] - wide[0] > 5 * (tight[1] - tight[0])


def test_fit_needs_three_points():
    with pytest.raises(config_lib.ConfigError, match=">= 3 points"):
        scaling.fit_power_law([1.0, 2.0], [3.0, 2.0])


def test_compute_optimal_steps_feed_tokens_per_param():
    cfg = config_lib.load(None, ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16",
                                 "data.batch_size=4"))
    total, matmul = scaling.model_size(cfg)
    assert total == cfg.model.param_count() and total - matmul == cfg.model.vocab_size * 32  # embed table
    steps = scaling.compute_optimal_steps(cfg, 20)
    assert (steps - 1) * 64 < 20 * matmul <= steps * 64
    assert scaling.training_flops(cfg, 1000) == pytest.approx(
        (6 * matmul + 12 * 2 * cfg.model.n_heads * cfg.model.head_dim * 16) * 1000)


def test_ratio_stderr_is_the_mean_stderr_for_equal_lengths_and_matches_resampling():
    """Equal byte counts: the pooled ratio's s.e. is std(x_k)/sqrt(K) of the per-sample ratios. Unequal
    ones: it matches the spread of the pooled ratio over 4000 fresh draws within 10 %."""
    rng = np.random.default_rng(0)
    nats = rng.gamma(4.0, 2.0, 50)
    assert ratio_stderr(nats, np.full(50, 7)) == pytest.approx(np.std(nats / 7, ddof=1) / math.sqrt(50))
    assert math.isnan(ratio_stderr([1.0], [2.0]))
    draws = []
    for _ in range(4000):
        b = rng.integers(5, 60, 40)
        draws.append((rng.gamma(4.0, 0.5, 40) * b).sum() / b.sum())
    b = rng.integers(5, 60, 4000)
    n = rng.gamma(4.0, 0.5, 4000) * b
    estimates = [ratio_stderr(n[i:i + 40], b[i:i + 40]) for i in range(0, 4000, 40)]
    assert np.mean(estimates) == pytest.approx(np.std(draws), rel=0.1)


def test_tables_carry_stderr_columns_equal_to_the_json(tmp_path):
    """Every bits/byte column of results.csv/.md and samplers.csv has its ± s.e. column, with the values of
    the results (the JSON of `jaxorder sweep --json`)."""
    results = [{"run": "mdm", "objective": "mdm", "bpb": 2.5, "bpb_stderr": 0.03, "kind": "bound", "step": 5,
                "orders": {"l2r": {"bpb": 2.7, "bpb_stderr": 0.04, "windows": 64}},
                "generate": [{"sampler": "confidence", "judge_bpb": 3.1, "judge_bpb_stderr": 0.2}]},
               {"run": "l2r", "objective": "l2r", "bpb": 2.4, "bpb_stderr": 0.02, "kind": "exact", "step": 5}]
    report.write_report(results, {}, tmp_path, "t")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert float(rows[0]["order:l2r"]) == 2.7 and float(rows[0]["order_stderr:l2r"]) == 0.04
    assert rows[1]["order_stderr:l2r"] == "" and float(rows[1]["bpb_stderr"]) == 0.02
    sampler = next(csv.DictReader((tmp_path / "samplers.csv").open()))
    assert float(sampler["judge_bpb_stderr"]) == 0.2
    md = (tmp_path / "results.md").read_text()
    assert "| order l2r | ± s.e. |" in md and "| 2.7000 | 0.0400 |" in md and "| 3.1000 | 0.2000 |" in md
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == results


def test_series_labels_and_figures_from_a_sweep(tmp_path, tiny_config_file):
    """The curve axis is the one whose parts set the key: its other parts are references, the other axes'
    parts name the groups; the report draws block_curve.png and scaling.png and states the multiplier."""
    from jaxorder.experiments.sweep import load_sweep, series_labels

    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: {tiny_config_file}\naxes:\n"
                    "  - {corpus: [], markov: [data.source=markov]}\n"
                    "  - {l2r: [objective.name=l2r], bd3_b2: [objective.name=bd3, objective.block_size=2]}\n"
                    "curve: objective.block_size\nscaling: {sizes: data.source, reference: l2r}\n")
    spec = load_sweep(path)
    labels = series_labels(spec, "objective.block_size")
    assert labels["markov_bd3_b2"] == ("markov", "bd3_b2", True)
    assert labels["corpus_l2r"] == ("corpus", "l2r", False)
    with pytest.raises(config_lib.ConfigError, match="no axis of sweep s sets model.d_model"):
        series_labels(spec, "model.d_model")
    C = np.logspace(10, 13, 4)
    results = [{"run": f"{s}_{i}", "objective": s, "bpb": float(scaling.power_law(c, *p)), "bpb_stderr": 0.01,
                "series": s, "compute_flops": float(c), "scaling_reference": "l2r"}
               for s, p in (("l2r", (300.0, 0.25, 1.0)), ("mdm", (300.0 * 4 ** 0.25, 0.25, 1.0)))
               for i, c in enumerate(C)]
    curve = {"curve_group": "corpus", "curve_key": "objective.block_size", "bpb_stderr": 0.02}
    results += [{"run": f"b{b}", "objective": "bd3", "bpb": 2.0 + b / 10, "curve_label": f"bd3_b{b}",
                 "curve_x": b, **curve} for b in (1, 2, 4)]
    results.append({"run": "ref", "objective": "l2r", "bpb": 2.0, "curve_label": "l2r", "curve_x": None,
                    **curve})
    report.write_report(results, {}, tmp_path, "t")
    md = (tmp_path / "results.md").read_text()
    assert (tmp_path / "block_curve.png").stat().st_size > 0 and (tmp_path / "scaling.png").stat().st_size > 0
    assert "- mdm: 4x" in md and "| l2r | 4 |" in md and "Bits/byte vs objective.block_size" in md
