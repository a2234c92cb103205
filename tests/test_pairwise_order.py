"""The pairwise-statistics order (jaxorder/data/pairwise_order.py) and `jaxorder data order`."""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxorder import orders
from jaxorder.cli import main
from jaxorder.data import pairwise_order
from jaxorder.data.order_command import file_text, spread_indices
from jaxorder.data.pairwise_order import chain_order, mutual_information


def brute_mutual_information(windows_NL: np.ndarray, i: int, j: int) -> float:
    """I(i; j) in nats straight from the definition, with Counters."""
    N = len(windows_NL)
    pair = Counter(zip(windows_NL[:, i].tolist(), windows_NL[:, j].tolist()))
    pi, pj = Counter(windows_NL[:, i].tolist()), Counter(windows_NL[:, j].tolist())
    return sum(c / N * math.log(c * N / (pi[a] * pj[b])) for (a, b), c in pair.items())


def markov_windows(n: int, length: int, rng: np.random.Generator, vocab: int = 6) -> np.ndarray:
    """Text-like windows: a sticky first-order chain (next = previous with prob. 0.7, else uniform)."""
    x = np.empty((n, length), np.int32)
    x[:, 0] = rng.integers(vocab, size=n)
    for t in range(1, length):
        stay = rng.random(n) < 0.7
        x[:, t] = np.where(stay, x[:, t - 1], rng.integers(vocab, size=n))
    return x


def test_mutual_information_matches_the_definition(monkeypatch):
    """Both histogram paths (dense bincount, and the counts of the pairs seen for a large vocabulary)."""
    w = np.random.default_rng(0).integers(0, 4, size=(60, 5))
    w[:, 3] = (w[:, 1] + (w[:, 2] > 1)) % 4  # some dependence
    want = np.array([[brute_mutual_information(w, i, j) for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(mutual_information(w), want, atol=1e-10)
    monkeypatch.setattr(pairwise_order, "BINCOUNT_CELLS", 0)
    np.testing.assert_allclose(mutual_information(w), want, atol=1e-10)


@pytest.mark.parametrize("hidden", [
    [5, 1, 2, 3, 4, 0, 6, 7, 8, 9],  # swap05: text token r sits at position hidden[r]
    [3, 7, 0, 9, 1, 4, 8, 2, 6, 5],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 0],  # from its smaller end (0) the chain runs against reading order
])
def test_the_chain_recovers_the_order_the_positions_were_shuffled_by(hidden):
    """Markov text laid out with its r-th token at position hidden[r]: the chain is hidden itself or its
    reverse (the statistics are symmetric), whichever runs closer to reading order."""
    text_NL = markov_windows(4000, 10, np.random.default_rng(1))
    w = np.empty_like(text_NL)
    w[:, hidden] = text_NL
    got = chain_order(mutual_information(w))
    hidden = np.asarray(hidden)
    forward = np.corrcoef(hidden, np.arange(10))[0, 1] >= np.corrcoef(hidden[::-1], np.arange(10))[0, 1]
    want = hidden if forward else hidden[::-1]
    np.testing.assert_array_equal(got, want)


def test_reading_order_wins_the_direction_and_the_ties():
    """Reversed text gives reading order too (one chain, two directions); no information at all gives
    reading order (the closest pair first)."""
    text_NL = markov_windows(3000, 7, np.random.default_rng(2))
    np.testing.assert_array_equal(chain_order(mutual_information(text_NL[:, ::-1])), np.arange(7))
    np.testing.assert_array_equal(chain_order(np.zeros((6, 6))), np.arange(6))
    np.testing.assert_array_equal(chain_order(np.zeros((1, 1))), [0])


def test_the_chain_is_a_permutation_with_the_most_information_among_all_when_it_is_tiny():
    """On a random symmetric matrix (5 positions, brute force over all 5! paths): a permutation, and its
    total link information at least as high as the greedy bound allows (here: equal to the best path on
    a matrix whose best path is unique by a margin)."""
    rng = np.random.default_rng(3)
    best = [2, 4, 0, 3, 1]
    mi = rng.uniform(0, 0.1, size=(5, 5))
    mi = (mi + mi.T) / 2
    for a, b in zip(best[:-1], best[1:]):
        mi[a, b] = mi[b, a] = 1.0
    got = chain_order(mi)
    assert sorted(got.tolist()) == list(range(5))
    score = lambda p: sum(mi[a, b] for a, b in zip(p[:-1], p[1:]))  # noqa: E731
    assert score(got) == pytest.approx(max(score(p) for p in itertools.permutations(range(5))))


def test_the_file_names_the_order_for_every_longer_window():
    order = np.array([5, 1, 2, 3, 4, 0, 6, 7])
    text = file_text(order)
    assert text == "perm:5,1-4,0,6-7,8-\n"
    np.testing.assert_array_equal(orders.resolve(orders.parse(text.strip()), 8), order)
    np.testing.assert_array_equal(orders.resolve(orders.parse(text.strip()), 12), [*order, 8, 9, 10, 11])
    np.testing.assert_array_equal(spread_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(spread_indices(3, 4), [0, 1, 2])


def test_data_order_command_on_swapped_markov_text(tmp_path, capsys):
    """`jaxorder data order` on a low-temperature Markov chain with swap05: the oracle order, written as a
    perm file that learned_order's q_init takes."""
    data = ["data.source=markov", "data.markov_temperature=0.3", "data.synthetic_tokens=40000",
            "data.seq_len=12", "data.batch_size=4", "data.transform=swap05"]
    out = tmp_path / "order.txt"
    assert main(["data", "order", "--out", str(out), "--json", "--windows", "2000", *data]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["order"] == "perm:5,1-4,0,6-11,12-" and summary["windows"] == 2000
    assert not summary["is_l2r"] and summary["link_bits_min"] > summary["pair_bits_mean"]
    assert out.read_text() == "perm:5,1-4,0,6-11,12-\n"
    assert main(["data", "order", *data[:-1]]) == 0
    assert "training windows of 12 tokens: perm:0-11,12-\n" in capsys.readouterr().out


def test_data_order_bad_flags_are_one_line_errors(capsys):
    assert main(["data", "order", "--windows", "1"]) == 2
    assert main(["data", "prepare"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --windows 1 must be >= 2 (the statistics need at least two windows)",
                   "error: jaxorder data prepare needs --out DIR (the new dataset directory)"]


def test_the_swap05_sweep_starts_q_at_the_order_the_command_reads_off_the_corpus(capsys):
    """configs/sweeps/learned_order_swap05.yaml writes the command's output out; this keeps them equal."""
    sweep = yaml.safe_load(Path("configs/sweeps/learned_order_swap05.yaml").read_text())
    row = next(axis for axis in sweep["axes"] if "learned_order_pairwise" in axis)["learned_order_pairwise"]
    q_init = next(o for o in row if o.startswith("objective.q_init="))
    assert main(["data", "order", "--json", "--config", "configs/experiments/study_smoke.yaml",
                 "data.transform=swap05"]) == 0
    assert q_init == "objective.q_init=" + json.loads(capsys.readouterr().out)["order"]


def test_progress_is_reported_per_position_and_does_not_change_the_result():
    w = np.random.default_rng(4).integers(0, 3, size=(40, 4))
    seen = []
    got = mutual_information(w, lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    np.testing.assert_array_equal(got, mutual_information(w))
