"""An order read off the data: a chain through the positions' strongest pairwise dependencies.

The plug-in mutual information between the tokens at positions i and j over N training windows,

    I(i; j) = sum_{a,b} p_ij(a, b) log [p_ij(a, b) / (p_i(a) p_j(b))]    (nats),

is high for positions whose tokens predict each other (neighbours in the text) and low for distant
ones. The chain joins positions greedily by decreasing I (the Kruskal rule with every position
limited to two links and no cycles), which ends in one path through all L positions: for plain text
the reading order, for swap05 windows (tokens 0 and 5 exchanged) 5, 1, 2, 3, 4, 0, 6, ..., L-1. A
path and its reverse have the same total I (so do the two orders under a perfect model: the chain
rule), so the pairwise statistics cannot choose a direction; the one closer to reading order
(higher correlation of position with rank; ties: the smaller first position) is returned.

learned_order can start its posterior there (`objective.q_init=perm@FILE`, the file written by
`jaxorder data order`); the ELBO then keeps or leaves it. The plug-in estimate is biased upward by
about (cells - 1) / 2N for a table of `cells` nonzero pairs; the bias is about equal for every pair
of positions of stationary data, so it shifts the matrix but barely reorders it. Cost: L (L - 1) / 2
joint histograms over N windows.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

BINCOUNT_CELLS = 1 << 24  # up to this many (a, b) cells a dense histogram; beyond, counts of the pairs seen


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _pair_entropy(a_N: np.ndarray, b_N: np.ndarray, vocab_size: int) -> float:
    codes_N = a_N.astype(np.int64) * vocab_size + b_N
    if vocab_size * vocab_size <= BINCOUNT_CELLS:
        return _entropy(np.bincount(codes_N, minlength=vocab_size * vocab_size))
    return _entropy(np.unique(codes_N, return_counts=True)[1])


def mutual_information(windows_NL: np.ndarray,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """I [L, L] in nats between the tokens at every two positions (plug-in; diagonal: the entropy);
    `progress(done, L)` is called after each position's row."""
    windows_NL = np.asarray(windows_NL)
    if windows_NL.ndim != 2 or len(windows_NL) < 2:
        raise ValueError(f"need windows [N >= 2, L], got shape {windows_NL.shape}")
    L, V = windows_NL.shape[1], int(windows_NL.max()) + 1
    h_L = np.array([_entropy(np.bincount(windows_NL[:, i], minlength=V)) for i in range(L)])
    mi_LL = np.diag(h_L)
    for i in range(L):
        for j in range(i + 1, L):
            mi_LL[i, j] = mi_LL[j, i] = h_L[i] + h_L[j] - _pair_entropy(windows_NL[:, i], windows_NL[:, j], V)
        if progress is not None:
            progress(i + 1, L)
    return mi_LL


def chain_order(mi_LL: np.ndarray) -> np.ndarray:
    """The greedy maximum-information path through all positions, oriented toward reading order."""
    L = len(mi_LL)
    if L == 1:
        return np.zeros(1, dtype=np.int32)
    root = list(range(L))

    def find(a: int) -> int:
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    links: list[list[int]] = [[] for _ in range(L)]
    i_E, j_E = np.triu_indices(L, 1)
    for e in np.lexsort((i_E, j_E - i_E, -mi_LL[i_E, j_E])):  # ties: the closer pair, then the earlier
        i, j = int(i_E[e]), int(j_E[e])
        if len(links[i]) < 2 and len(links[j]) < 2 and find(i) != find(j):
            root[find(i)] = find(j)
            links[i].append(j)
            links[j].append(i)
    ends = [i for i in range(L) if len(links[i]) == 1]  # a spanning path has exactly two ends

    def walk(start: int) -> np.ndarray:
        path, previous = [start], -1
        while len(path) < L:
            step = next(k for k in links[path[-1]] if k != previous)
            previous = path[-1]
            path.append(step)
        return np.asarray(path, dtype=np.int32)

    forward, backward = walk(min(ends)), walk(max(ends))
    rank_L = np.arange(L)
    closer = np.corrcoef(forward, rank_L)[0, 1] >= np.corrcoef(backward, rank_L)[0, 1]
    return forward if closer else backward


def link_information(mi_LL: np.ndarray, order: np.ndarray) -> np.ndarray:
    """I between each position of `order` and the next [L - 1] (nats)."""
    return mi_LL[order[:-1], order[1:]]
