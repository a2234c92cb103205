"""Repeated-data reports: curve crossings, bits/byte vs epochs, latent-order posterior weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxorder.experiments.epochs import (
    crossing_rows,
    curve_crossings,
    epoch_curve,
    epochs_section,
    posterior_weights,
)
from jaxorder.experiments.report import markdown_table


def _brute_force_crossings(x1, y1, x2, y2, n: int = 200_001) -> list[float]:
    """Sign changes of y1 - y2 on a dense grid of the common range (the plain reference)."""
    xs = np.linspace(max(x1[0], x2[0]), min(x1[-1], x2[-1]), n)
    s = np.sign(np.interp(xs, x1, y1) - np.interp(xs, x2, y2))
    nz = np.nonzero(s)[0]
    return [float(xs[nz[k + 1]]) for k in range(len(nz) - 1) if s[nz[k]] != s[nz[k + 1]]]


def test_crossings_match_brute_force_on_random_curves():
    # catches a wrong interpolation formula, a missed crossing between breakpoints of the other curve,
    # and crossings reported outside the common range
    rng = np.random.default_rng(0)
    for _ in range(30):
        x1 = np.sort(rng.choice(np.linspace(0, 10, 101), size=rng.integers(2, 8), replace=False))
        x2 = np.sort(rng.choice(np.linspace(0.5, 12, 116), size=rng.integers(2, 8), replace=False))
        y1, y2 = rng.normal(size=len(x1)), rng.normal(size=len(x2))
        got = curve_crossings(x1, y1, x2, y2)
        want = _brute_force_crossings(x1, y1, x2, y2)
        assert len(got) == len(want)
        for (x, y, _), w in zip(got, want):
            assert x == pytest.approx(w, abs=1e-3)
            assert y == pytest.approx(np.interp(x, x2, y2), abs=1e-9)  # on both curves


def test_crossing_sign_touching_and_no_overlap():
    # ar falls below then rises above (overfits); mdm keeps improving: one crossing at x = 3
    ar = ([0, 2, 4], [3.0, 2.0, 2.6])
    mdm = ([0, 2, 4], [3.5, 2.5, 2.1])
    (x, y, sign), = curve_crossings(*ar, *mdm)
    # d = ar - mdm: -0.5 at 2, +0.5 at 4 -> crossing halfway; ar above afterwards
    assert (x, sign) == (pytest.approx(3.0), 1) and y == pytest.approx(2.3)
    assert curve_crossings([0, 1, 2], [1, 0, 1], [0, 2], [0, 0]) == []  # touches at x=1, never crosses
    assert curve_crossings([0, 1], [0, 1], [2, 3], [1, 0]) == []  # no common range
    # equal over [1, 2], then parts to the other side: one crossing where they met
    (x, _, sign), = curve_crossings([0, 1, 2, 3], [1, 0, 0, -1], [0, 3], [0, 0])
    assert (x, sign) == (1.0, -1)


def _write_run(run_dir: Path, val: list[tuple[int, float]], train: list[dict] = ()) -> Path:
    run_dir.mkdir(parents=True)
    lines = [{"step": s, "split": "val", "bpb": b} for s, b in val]
    lines += [{"split": "train", **t} for t in train]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


def test_epochs_section_plots_and_reports_the_crossing(tmp_path):
    # 100 tokens per step, 200 unique tokens: step 100 is epoch 50
    dirs = {"l2r": _write_run(tmp_path / "l2r", [(100, 3.0), (200, 2.0), (400, 2.6)]),
            "mdm": _write_run(tmp_path / "mdm", [(100, 3.5), (200, 2.5), (400, 2.1)])}
    results = [{"run": n, "step": 400, "tokens_seen": 40_000, "unique_train_tokens": 200} for n in dirs]
    epochs, bpb = epoch_curve(dirs["l2r"], results[0])
    np.testing.assert_allclose(epochs, [50, 100, 200])
    rows = crossing_rows(results, {n: epoch_curve(dirs[n], r) for n, r in zip(dirs, results)})
    want = "epoch 150.00 at 2.3000 bits/byte; mdm lower after it"
    assert rows == [{"runs": "l2r vs mdm", "crossing": want}]
    text = epochs_section(results, dirs, tmp_path, "t")
    assert "epoch 150.00" in text and (tmp_path / "val_bpb_epochs.png").stat().st_size > 0
    # under one epoch there is nothing to say (and no plot)
    few = [{**r, "tokens_seen": 100} for r in results]
    assert epochs_section(few, dirs, tmp_path / "none", "t") == ""
    # runs on different budgets are not compared
    other = [results[0], {**results[1], "unique_train_tokens": 400}]
    assert crossing_rows(other, {n: epoch_curve(dirs[n], r) for n, r in zip(dirs, other)}) == []


def test_posterior_weights_are_the_last_logged_ones_and_shown(tmp_path):
    run = _write_run(tmp_path / "latent", [(10, 2.0)],
                     [{"step": 5, "w_l2r": 0.1, "w_r2l": 0.2, "w_random": 0.35},
                      {"step": 10, "w_l2r": 0.7, "w_r2l": 0.1, "w_random": 0.1}])
    assert posterior_weights(run) == {"w_l2r": 0.7, "w_r2l": 0.1, "w_random": 0.1}
    assert posterior_weights(_write_run(tmp_path / "l2r", [(10, 2.0)], [{"step": 10, "loss": 1.0}])) == {}
    table = markdown_table([{"run": "latent", "bpb": 2.0, "w_l2r": 0.7, "w_r2l": 0.1, "w_random": 0.1},
                            {"run": "l2r", "bpb": 2.1}])
    assert "w l2r" in table and "0.700" in table
    assert "w l2r" not in markdown_table([{"run": "l2r", "bpb": 2.1}])
