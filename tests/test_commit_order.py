"""What order a decoder used: AR-ness and commit distance (jaxorder.evaluation.commit_order) on hand
cases, and the commit orders the samplers return (committed_at)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.data.synthetic import sudoku_peers
from jaxorder.evaluation.commit_order import (
    ar_ness,
    commit_distance,
    filled_neighbours,
    most_constrained_order,
    order_stats,
    plot_commit_orders,
)
from jaxorder.objectives.common import special_ids
from jaxorder.sampling import SamplerOptions, sample

TINY = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.seq_len=16")


@pytest.mark.parametrize("prompt", [0, 3])
def test_left_to_right_is_one_and_right_to_left_is_zero(prompt):
    L = 10
    l2r = np.r_[np.full(prompt, -1), np.arange(L - prompt)]
    r2l = np.r_[np.full(prompt, -1), np.arange(L - prompt)[::-1]]
    assert ar_ness(l2r) == 1.0 and ar_ness(r2l) == 0.0
    assert commit_distance(l2r) == 1.0
    # right to left after a prompt: the first commit is L - prompt away from it, the others next to one
    assert commit_distance(r2l) == (1.0 if not prompt else (L - prompt + L - prompt - 1) / (L - prompt))


def test_hand_counted_order_and_parallel_commits():
    # commits: 0 (extends), 2 (a gap before it), 1 (closes the gap: 2 is committed), 3, 4 (extend)
    at = np.array([0, 2, 1, 3, 4])
    assert ar_ness(at) == 3 / 5
    assert commit_distance(at) == (2 + 1 + 1 + 1) / 4  # the first commit has nothing before it
    block = np.array([-1, -1, 0, 0, 0, 1, 1])  # two blocks, each committed in one step at the prefix
    assert ar_ness(block) == 1.0
    assert commit_distance(block) == (1 + 2 + 3 + 1 + 2) / 5  # same-step commits do not count as context
    assert ar_ness(np.full(4, -1)) is None and commit_distance(np.full(4, -1)) is None
    assert order_stats(np.stack([at, at[::-1]])) == {"ar_ness": (0.6 + 0.0) / 2, "commit_distance": 1.25}


def test_filled_neighbours_hand_counted():
    path = np.zeros((4, 4), bool)  # 0 - 1 - 2 - 3; position 2 fixed
    path[[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]] = True
    chosen, open_mean = filled_neighbours(np.array([2, 0, -1, 1]), path)
    np.testing.assert_allclose(chosen, [1, 1, 1])
    np.testing.assert_allclose(open_mean, [2 / 3, 1, 1])
    chosen, open_mean = filled_neighbours(np.array([0, 0, -1, 1]), path)  # one step commits 0 and 1
    np.testing.assert_allclose(chosen, [0, 1, 1])
    np.testing.assert_allclose(open_mean, [2 / 3, 2 / 3, 1])


def test_filled_peers_on_sudoku_random_zero_and_most_constrained_positive():
    """Over a whole order the mean count is the same for every order (each peer pair counted once:
    10); a uniformly random order beats the open-cell mean by 0 in expectation; the most-constrained-
    first order never falls below it."""
    peers = sudoku_peers()
    rng = np.random.default_rng(0)
    excess = []
    for _ in range(200):
        chosen, open_mean = filled_neighbours(rng.permutation(81), peers)
        assert chosen.mean() == 10.0
        excess.append((chosen - open_mean).mean())
    assert abs(np.mean(excess)) < 4 * np.std(excess) / np.sqrt(len(excess))
    # from an empty grid (ties: the lowest cell) the next cell in reading order always has the most
    committed = most_constrained_order(np.zeros(81, bool), peers)
    assert committed.tolist() == list(range(81))
    fixed = rng.random(81) < 0.4
    committed = most_constrained_order(fixed, peers)
    assert (committed[fixed] == -1).all() and sorted(committed[~fixed]) == list(range((~fixed).sum()))
    chosen, open_mean = filled_neighbours(committed, peers)
    assert (chosen >= open_mean).all() and (chosen - open_mean).mean() > 2 + max(excess)
    givens = np.where(rng.random(81) < 0.4, -1, rng.permutation(81))  # fixed cells count as filled
    chosen, _ = filled_neighbours(givens, peers)
    fixed = givens < 0
    hole_pairs = peers[np.ix_(~fixed, ~fixed)].sum() / 2
    assert chosen.sum() == peers[np.ix_(~fixed, fixed)].sum() + hole_pairs


def test_plot_writes_a_png(tmp_path):
    path = plot_commit_orders(np.array([[-1, 0, 1, 2], [2, 1, 0, -1]]), tmp_path / "order.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("order, expected", [("l2r", 1.0), ("r2l", 0.0)])
def test_any_order_sampler_reports_the_order_it_used(order, expected):
    cfg = config_lib.load(None, ("objective.name=ao_ar", *TINY))
    params = model.init_params(cfg.model, jax.random.key(0), target_positions=True)
    rows = np.full((2, 16), special_ids(cfg.model).mask, np.int32)
    rows[1, :4] = [65, 66, 67, 68]
    out = jax.device_get(sample(params, cfg, rows, jax.random.key(0), order, SamplerOptions()))
    assert np.all(out["committed_at"][1, :4] == -1)
    assert sorted(out["committed_at"][0].tolist()) == list(range(16))
    assert order_stats(out["committed_at"])["ar_ness"] == expected


@pytest.mark.parametrize("objective", ["mdm", "bd3"])
def test_masked_and_block_samplers_record_each_commit_step(objective):
    extra = ("objective.block_size=4",) if objective == "bd3" else ()
    cfg = config_lib.load(None, (f"objective.name={objective}", *TINY, *extra))
    params = model.init_params(cfg.model, jax.random.key(0))
    rows = np.full((2, 16), special_ids(cfg.model).mask, np.int32)
    rows[:, :4] = 65
    # ignore_eos: the end-of-text fill commits whole blocks at once (tests/test_sampling_eos.py)
    opts = SamplerOptions(steps=6, block_length=4 if objective == "mdm" else 0, ignore_eos=True)
    out = jax.device_get(sample(params, cfg, rows, jax.random.key(1), "confidence", opts))
    at = out["committed_at"]
    assert np.all(at[:, :4] == -1) and np.all((at[:, 4:] >= 0) & (at[:, 4:] < int(out["steps"])))
    for step in range(int(out["steps"])):  # the per-step commit counts the sampler reports
        assert np.array_equal((at == step).sum(axis=1), out["commits"][step])
    # semi-autoregressive blocks of 4 are filled left to right: a block never starts before the last ends
    for b in range(2):
        firsts = [at[b, s:s + 4].min() for s in range(4, 16, 4)]
        lasts = [at[b, s:s + 4].max() for s in range(4, 16, 4)]
        assert all(f > last for f, last in zip(firsts[1:], lasts[:-1]))
