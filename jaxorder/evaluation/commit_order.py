"""What order a decoder used: AR-ness and locality of a sample's commit order, and a plot of it.

A masked, block or any-order sampler returns ``committed_at`` [B, L]: the step (or, for any-order
runs, the index in the generation order) at which each position was committed, -1 for fixed
tokens (prompt, template). Commits are taken in order of step, and by position within a step.

- ``ar_ness``: the fraction of commits that extend the leftmost committed prefix: every position
  before the commit is already committed (fixed, earlier, or earlier in the same step) and the
  position after it is not, so the commit grows the prefix instead of closing the last gap before
  text committed further right. A left-to-right order scores 1, right-to-left 0.
- ``commit_distance``: the mean distance from each commit to the nearest position committed at an
  earlier step or fixed (DiffuCoder's locality measure; commits with nothing committed before them
  are left out). Left to right and right to left both give 1.
- ``filled_neighbours``: on a graph over the positions (e.g. Sudoku's peers: same row, column or
  box), for each commit the neighbours of the committed position already filled (fixed or committed
  at an earlier step), beside the mean of that count over the positions still open just before the
  step: what a uniformly random choice of the next position gets in expectation, given the same
  history. "Constrained first" is a positive difference. (The mean count over the commits alone
  cannot tell orders apart: summed over a whole order it is the number of edges between generated
  positions plus those from generated to fixed ones, the same for every order.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _commits(committed_at_L: np.ndarray) -> list[int]:
    """Generated positions in commit order (step, then position)."""
    generated = np.flatnonzero(committed_at_L >= 0)
    return sorted(generated.tolist(), key=lambda j: (int(committed_at_L[j]), j))


def ar_ness(committed_at_L: np.ndarray) -> float | None:
    """Fraction of commits that extend the leftmost committed prefix (module docstring); None when
    nothing was generated."""
    committed_at_L = np.asarray(committed_at_L)
    done = committed_at_L < 0
    commits = _commits(committed_at_L)
    if not commits:
        return None
    extends = 0
    L = len(committed_at_L)
    for j in commits:
        extends += bool(done[:j].all() and (j + 1 == L or not done[j + 1]))
        done[j] = True
    return extends / len(commits)


def commit_distance(committed_at_L: np.ndarray) -> float | None:
    """Mean distance from each commit to the nearest position fixed or committed at an earlier step
    (module docstring); None when no commit had one."""
    committed_at_L = np.asarray(committed_at_L)
    positions = np.arange(len(committed_at_L))
    distances = []
    for j in _commits(committed_at_L):
        before = committed_at_L < committed_at_L[j]  # fixed positions are -1
        if before.any():
            distances.append(int(np.min(np.abs(positions[before] - j))))
    return float(np.mean(distances)) if distances else None


def filled_neighbours(committed_at_L: np.ndarray, adjacency_LL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chosen [C], open mean [C]) per commit in commit order (module docstring): the committed
    position's neighbours filled before its step, and the mean of that count over the positions still
    open before the step (commits of one step are all scored against the state before it)."""
    committed_at_L = np.asarray(committed_at_L)
    adjacency_LL = np.asarray(adjacency_LL, np.int64)
    chosen, open_mean = [], []
    for step in np.unique(committed_at_L[committed_at_L >= 0]):
        filled_L = committed_at_L < step  # fixed positions are -1
        count_L = adjacency_LL @ filled_L
        now = np.flatnonzero(committed_at_L == step)  # by position within the step
        chosen += count_L[now].tolist()
        open_mean += [float(count_L[~filled_L].mean())] * len(now)
    return np.asarray(chosen, np.float64), np.asarray(open_mean, np.float64)


def most_constrained_order(fixed_L: np.ndarray, adjacency_LL: np.ndarray) -> np.ndarray:
    """committed_at [L] of the order that always fills the open position with the most filled
    neighbours (fixed ones count; ties: the lowest position), -1 at the fixed positions: the reference
    that maximizes ``filled_neighbours``' difference step by step."""
    adjacency_LL = np.asarray(adjacency_LL, np.int64)
    filled_L = np.asarray(fixed_L, bool).copy()
    committed_L = np.full(len(filled_L), -1)
    for step in range(int((~filled_L).sum())):
        pos = int(np.argmax(np.where(filled_L, -1, adjacency_LL @ filled_L)))
        committed_L[pos], filled_L[pos] = step, True
    return committed_L


def order_stats(committed_at_BL: np.ndarray) -> dict:
    """Mean AR-ness and commit distance over the rows that generated something."""
    ar = [v for v in (ar_ness(row) for row in np.asarray(committed_at_BL)) if v is not None]
    dist = [v for v in (commit_distance(row) for row in np.asarray(committed_at_BL)) if v is not None]
    return {"ar_ness": float(np.mean(ar)) if ar else None,
            "commit_distance": float(np.mean(dist)) if dist else None}


def plot_commit_orders(committed_at_BL: np.ndarray, path: str | Path, title: str, rows: int = 4) -> Path:
    """A PNG of commit step against position for the first `rows` samples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    committed_at_BL = np.asarray(committed_at_BL)[:rows]
    fig, axes = plt.subplots(1, len(committed_at_BL), figsize=(3.2 * len(committed_at_BL), 3), squeeze=False)
    for b, ax in enumerate(axes[0]):
        at = committed_at_BL[b]
        gen = np.flatnonzero(at >= 0)
        ax.scatter(gen, at[gen], s=4)
        score = ar_ness(at)
        ax.set_title(f"sample {b + 1}: AR-ness {'n/a' if score is None else f'{score:.2f}'}", fontsize=8)
        ax.set_xlabel("position")
        ax.set_ylabel("commit step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
