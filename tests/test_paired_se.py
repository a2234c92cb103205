"""tools/paired_se.py: the paired standard error of two per-window scores (docs/study.md quotes it)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest

from jaxorder.config import ConfigError
from jaxorder.evaluation.runs import eval_run

from conftest import REPO

spec = importlib.util.spec_from_file_location("paired_se", REPO / "tools" / "paired_se.py")
paired_se = importlib.util.module_from_spec(spec)
sys.modules["paired_se"] = paired_se  # its dataclass looks its module up while being defined
spec.loader.exec_module(paired_se)


def test_paired_error_is_the_spread_of_the_differences_not_of_each_side():
    rng = np.random.default_rng(0)
    hard_N = rng.normal(3.0, 1.0, 40)  # shared window difficulty: cancels in a - b
    a_N, b_N = hard_N + rng.normal(0.1, 0.05, 40), hard_N + rng.normal(0.0, 0.05, 40)
    out = paired_se.paired(a_N, b_N)
    n = len(a_N)
    # reference: var(a - b) = var a + var b - 2 cov(a, b), the unbiased (ddof 1) estimates
    var = a_N.var(ddof=1) + b_N.var(ddof=1) - 2 * np.cov(a_N, b_N, ddof=1)[0, 1]
    assert out["diff"] == pytest.approx(a_N.mean() - b_N.mean())
    assert out["diff_stderr"] == pytest.approx(math.sqrt(var / n))
    assert out["a_stderr"] == pytest.approx(a_N.std(ddof=1) / math.sqrt(n))
    # the unpaired error is about 20 times larger here: a code that ignored the pairing fails this
    assert out["diff_stderr"] < 0.2 * math.hypot(out["a_stderr"], out["b_stderr"])
    with pytest.raises(ValueError):
        paired_se.paired(a_N, b_N[:-1])


@pytest.mark.parametrize("text, expected", [
    ("runs/s/corpus_mdm:l2r", ("runs/s/corpus_mdm", None, "l2r")),
    ("runs/s/corpus_mdm:random:16", ("runs/s/corpus_mdm", None, "random:16")),
    ("/abs/mdm@750:yardstick", ("/abs/mdm", 750, "yardstick")),
    ("runs/a:b/run:perm:1,0,2-", ("runs/a:b/run", None, "perm:1,0,2-")),
])
def test_parse_side(text, expected):
    assert paired_se.parse_side(text) == expected


@pytest.mark.parametrize("text", ["runs/s/corpus_mdm", "runs/s/corpus_mdm:", "runs/s/mdm@x:l2r"])
def test_parse_side_rejects_bad_text(text):
    with pytest.raises(ConfigError):
        paired_se.parse_side(text)


def test_per_window_scores_average_to_evals_numbers(tiny_trained_run, capsys):
    run = str(tiny_trained_run("mdm"))
    windows = 8
    reference = eval_run(run, "l2r,random:2", windows)["orders"]
    for score, key in (("yardstick", "yardstick"), ("l2r", "l2r"), ("random:2", "random:2")):
        scored = paired_se.per_window(run, None, score, windows, check=False)
        assert scored.bpb_N.shape == (windows,)
        assert scored.bpb_N.mean() == pytest.approx(reference[key]["bpb"], rel=1e-5)
        assert scored.bpb_N.std(ddof=1) / math.sqrt(windows) == pytest.approx(reference[key]["bpb_stderr"],
                                                                              rel=1e-4)
    # a score against itself: the same windows and draws, a difference of exactly 0
    assert paired_se.main([f"{run}:random:2", f"{run}:random:2", "--windows", str(windows), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["diff"] == 0.0 and out["diff_stderr"] == 0.0 and out["windows"] == windows


def test_bad_scores_are_one_line_errors(tiny_trained_run, capsys):
    run = str(tiny_trained_run("mdm"))
    assert paired_se.main([f"{run}:greedy", f"{run}:l2r", "--windows", "4"]) == 2
    assert "must be yardstick" in capsys.readouterr().err
    assert paired_se.main([f"{run}:l2r", f"{run}:r2l", "--windows", "1"]) == 2
    assert "at least 2 windows" in capsys.readouterr().err
