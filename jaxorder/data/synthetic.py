"""Data with known answers: a random Markov chain, Sudoku grids, and the swap(0,5) transform.

All generators are seeded from ``data.seed`` and depend only on it and the ``DataConfig`` fields
they name, so a config reproduces its data exactly.

**Markov chain** (``data.source=markov``). ``markov_vocab = V`` states, emitted as the byte
symbols ``0..V-1`` (one symbol = one byte = one byte-tokenizer id, so bits/byte and everything
downstream work unchanged). Transition matrix: logits ``z_ij / markov_temperature`` with
``z_ij ~ N(0, 1)``; in every row ``min(round(markov_sparsity * V), V - 1)`` entries get zero
probability; softmax over the rest. Two kinds of transitions are never removed: the edges of a
random Hamiltonian cycle over the states (so the chain is irreducible and the stationary
distribution ``pi`` is unique) and, while a row keeps at least two transitions, one self-loop
(so the chain is also aperiodic). At the sparsity limit every row keeps only its cycle edge: a
deterministic cyclic permutation with entropy rate 0. Large temperatures approach the uniform
chain (entropy rate ``log2 V``). The ``synthetic_tokens`` symbols are split into equal-length
documents (at least 20 documents, at most ``MARKOV_DOC_TOKENS`` symbols each: 123 x 16260 for
2M), each a fresh run of the chain started from ``pi``; the chains are sampled in parallel
(alias tables, one vectorized step per time step). The documents carry
raw bytes (``Document.raw``), never text, so symbols >= 128 are not re-encoded as two UTF-8
bytes. ``markov_entropy_rate_bits`` gives the exact entropy rate
``H = -sum_i pi_i sum_j P_ij log2 P_ij`` (pi by an exact linear solve).

**Sudoku** (``data.source=sudoku``). Valid complete 9x9 grids from the base pattern
``(3r + r//3 + c) % 9 + 1`` under random validity-preserving transformations: digit relabelling,
row permutations within bands, band permutations, column permutations within stacks, stack
permutations and transposition. These grids are a subset of all 6.67e21 valid grids (the orbit of
one grid under this group: at most 9! * 6^8 * 2 ~ 1.2e12 grids), which is plenty of diversity
for training but not a uniform sample of all grids. Each grid is 81 ASCII digits '1'..'9';
grids are joined with '\\n' inside a document and a document ends without a newline, so the
packed stream (EOS between documents) has period 82: grid + one separator (newline or EOS).
With ``data.seq_len = 82`` every window is exactly one grid + separator; with a multiple of 82,
a whole number of grids.

**swap05** (``data.transform=swap05``). Swaps positions 0 and 5 of every training and
validation window (any source), after packing: the thought experiment in which the best
generation order is no longer left-to-right.
"""
from __future__ import annotations

import math

import numpy as np

from jaxorder.config import DataConfig
from jaxorder.data.documents import Document
from jaxorder.data.errors import DataError

MARKOV_MIN_DOCS = 20
MARKOV_DOC_TOKENS = 16384  # longest Markov document; more documents = more chains sampled in parallel
SUDOKU_DOCS = 20
SUDOKU_PERIOD = 82  # 81 digits + one separator ('\n' within a document, EOS between documents)
TRANSFORMS = ("none", "swap05")

# seed-stream tags: independent generators for independent parts of the data
_TAG_MARKOV_MATRIX, _TAG_MARKOV_SAMPLE, _TAG_SUDOKU = 1, 2, 3


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, tag])


# ----------------------------------------------------------------------------- Markov chain

def markov_transition_matrix(vocab: int, temperature: float, sparsity: float, seed: int) -> np.ndarray:
    """The float64 [V, V] row-stochastic transition matrix described in the module docstring."""
    V = int(vocab)
    if V < 2:
        raise ValueError(f"a Markov chain needs at least 2 states, got {V}")
    if temperature <= 0 or not 0 <= sparsity < 1:
        raise ValueError(f"need temperature > 0 and 0 <= sparsity < 1, got {temperature}, {sparsity}")
    rng = _rng(seed, _TAG_MARKOV_MATRIX)
    z = rng.standard_normal((V, V))
    perm = rng.permutation(V)
    order_scores = rng.random((V, V))
    rows = np.arange(V)
    nxt = np.empty(V, dtype=np.int64)
    nxt[perm] = np.roll(perm, -1)  # perm[k] -> perm[k+1]: a Hamiltonian cycle (irreducible)
    n_zero = min(int(round(sparsity * V)), V - 1)
    protected = np.zeros((V, V), dtype=bool)
    protected[rows, nxt] = True
    if n_zero <= V - 2:
        protected[perm[0], perm[0]] = True  # a self-loop on an irreducible chain: aperiodic
    allowed = np.ones((V, V), dtype=bool)
    if n_zero:
        order_scores[protected] = np.inf  # never among the n_zero lowest scores
        drop = np.argsort(order_scores, axis=1, kind="stable")[:, :n_zero]
        allowed[rows[:, None], drop] = False
    logits = np.where(allowed, z / temperature, -np.inf)
    top = logits.max(axis=1, keepdims=True)
    # keep allowed transitions representable in float64 (else tiny temperatures could underflow
    # a cycle edge to 0 and break irreducibility); changes probabilities by < 1e-300
    logits = np.where(allowed, np.maximum(logits, top - 700.0), -np.inf)
    w = np.exp(logits - top)
    return w / w.sum(axis=1, keepdims=True)


def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with A x = b: Gauss-Jordan elimination with partial pivoting in elementwise numpy.

    Used instead of np.linalg.solve because multithreaded OpenBLAS on a loaded 2-core machine
    slows a 256 x 256 solve by thread contention to a noticeable part of data preparation.
    """
    n = A.shape[0]
    M = np.concatenate([A, b[:, None]], axis=1).astype(np.float64)
    for k in range(n):
        p = k + int(np.argmax(np.abs(M[k:, k])))
        if M[p, k] == 0.0:
            raise np.linalg.LinAlgError("singular system: the Markov chain is not irreducible")
        if p != k:
            M[[k, p]] = M[[p, k]]
        M[k] /= M[k, k]
        factors = M[:, k].copy()
        factors[k] = 0.0
        M -= factors[:, None] * M[k][None, :]
    return M[:, -1]


def stationary_distribution(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum pi = 1, by an exact linear solve (unique for an irreducible P)."""
    V = P.shape[0]
    A = P.T - np.eye(V)
    A[-1, :] = 1.0  # replace one (redundant) balance equation by the normalization
    b = np.zeros(V)
    b[-1] = 1.0
    pi = _solve(A, b)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def entropy_rate_bits(P: np.ndarray, pi: np.ndarray | None = None) -> float:
    """-sum_i pi_i sum_j P_ij log2 P_ij (bits per symbol), 0 log 0 = 0."""
    if pi is None:
        pi = stationary_distribution(P)
    logp = np.log2(np.where(P > 0, P, 1.0))
    return float(-(pi * (P * logp).sum(axis=1)).sum())


def markov_chain(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(transition matrix P, stationary distribution pi) of the chain of ``cfg``."""
    P = markov_transition_matrix(cfg.markov_vocab, cfg.markov_temperature, cfg.markov_sparsity, cfg.seed)
    return P, stationary_distribution(P)


def markov_entropy_rate_bits(cfg: DataConfig) -> float:
    """Exact entropy rate of the ``data.source=markov`` chain in bits per symbol = bits per byte.

    This is the floor for any model of the data: a window's first token has the (larger)
    stationary entropy H(pi) and an EOS at a document boundary adds a little, so the true
    per-window optimum exceeds it by at most ~ (H(pi) - H) / seq_len; it is reported as the
    floor anyway.
    """
    P, pi = markov_chain(cfg)
    return entropy_rate_bits(P, pi)


def alias_tables(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias tables of every row of P: (threshold float64 [V, V], alias int [V, V]).

    Sampling from row i: draw a column k uniformly and f ~ U[0, 1); the state is k if
    f < threshold[i, k], else alias[i, k]. Zero-probability states have threshold 0 and are
    never an alias, so they are never drawn.
    """
    V = P.shape[0]
    thr = np.ones((V, V))
    alias = np.tile(np.arange(V), (V, 1))
    for i in range(V):
        q = (P[i] * (V / P[i].sum())).tolist()  # python floats: the loop is scalar work
        th, al = [1.0] * V, list(range(V))
        small = [j for j in range(V) if q[j] < 1.0]
        large = [j for j in range(V) if q[j] >= 1.0]
        while small and large:
            s = small.pop()
            big = large[-1]
            th[s], al[s] = q[s], big
            q[big] -= 1.0 - q[s]
            if q[big] < 1.0:
                small.append(large.pop())
        # whatever is left has q == 1 up to rounding: threshold 1 (the default)
        thr[i], alias[i] = th, al
    thr[P == 0] = 0.0
    return thr, alias


def sample_markov(P: np.ndarray, pi: np.ndarray, n_chains: int, length: int,
                  rng: np.random.Generator) -> np.ndarray:
    """[n_chains, length] runs of the chain P (uint8 symbols for V <= 256) started from pi.

    Alias sampling, all chains in parallel, one vectorized step per time step (the column k and
    the coin f of a step both come from one uniform u: k = floor(u V), f = u V - k).
    """
    V = P.shape[0]
    thr, alias = alias_tables(P)
    thr_flat, alias_flat = thr.ravel(), alias.ravel()
    pcdf = np.cumsum(pi)
    pcdf /= pcdf[-1]
    dtype = np.uint8 if V <= 256 else np.int32
    out = np.empty((length, n_chains), dtype=dtype)
    if length == 0:
        return out.T
    start = np.minimum(np.searchsorted(pcdf, rng.random(n_chains), side="right"), V - 1)
    uv = rng.random((length, n_chains)) * V
    col = uv.astype(np.int64)
    coin = uv - col
    cur = start
    out[0] = cur
    for t in range(1, length):
        idx = cur * V + col[t]
        cur = np.where(coin[t] < thr_flat[idx], col[t], alias_flat[idx])
        out[t] = cur
    return np.ascontiguousarray(out.T)


def markov_documents(cfg: DataConfig) -> list[Document]:
    """``synthetic_tokens`` symbols (rounded down to equal-length documents) as raw-byte documents."""
    total = int(cfg.synthetic_tokens)
    n_docs = max(MARKOV_MIN_DOCS, math.ceil(total / MARKOV_DOC_TOKENS))
    n_docs = min(n_docs, total // 2)
    if n_docs < 2:
        raise DataError(f"data.synthetic_tokens={total} is too few for Markov documents; "
                        f"raise data.synthetic_tokens (e.g. to 2000000)")
    length = total // n_docs
    P, pi = markov_chain(cfg)
    runs = sample_markov(P, pi, n_docs, length, _rng(cfg.seed, _TAG_MARKOV_SAMPLE))
    width = len(str(n_docs - 1))
    return [Document(f"markov-{i:0{width}d}", "", raw=runs[i].tobytes()) for i in range(n_docs)]


# ----------------------------------------------------------------------------- Sudoku

_BASE_GRID = ((3 * np.arange(9)[:, None] + np.arange(9)[:, None] // 3 + np.arange(9)[None, :]) % 9 + 1)


def _random_perms(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Independent uniform permutations of range(k) along the last axis."""
    return np.argsort(rng.random(shape + (k,)), axis=-1)


def _line_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 9] row (or column) orders: permute the 3 bands and the 3 lines within each band."""
    bands = _random_perms(rng, (n,), 3)  # [n, 3]
    within = _random_perms(rng, (n, 3), 3)  # [n, 3, 3]
    return (3 * bands[:, :, None] + within).reshape(n, 9)


def sudoku_grids(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 9, 9] valid complete grids with digits 1..9 (see the module docstring)."""
    rng = _rng(seed, _TAG_SUDOKU)
    rows = _line_order(rng, n)
    cols = _line_order(rng, n)
    g = _BASE_GRID[rows[:, :, None], cols[:, None, :]]  # [n, 9, 9]
    flip = rng.random(n) < 0.5
    g = np.where(flip[:, None, None], g.transpose(0, 2, 1), g)
    relabel = _random_perms(rng, (n,), 9) + 1  # digit d -> relabel[d - 1]
    g = np.take_along_axis(relabel, (g - 1).reshape(n, 81), axis=1).reshape(n, 9, 9)
    return g.astype(np.uint8)


def grid_to_string(grid: np.ndarray) -> str:
    """81 ASCII digits, row by row."""
    return (np.asarray(grid, dtype=np.uint8).reshape(81) + ord("0")).tobytes().decode("ascii")


def is_valid_grid(s: str) -> bool:
    """True iff ``s`` (surrounding whitespace ignored) is 81 digits '1'..'9' forming a complete
    Sudoku: every row, column and 3x3 box holds each digit once."""
    s = s.strip()
    if len(s) != 81 or any(c not in "123456789" for c in s):
        return False
    g = np.frombuffer(s.encode("ascii"), dtype=np.uint8).reshape(9, 9) - ord("0")
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    want = np.arange(1, 10)
    return all(np.array_equal(np.sort(x, axis=1), np.broadcast_to(want, (9, 9))) for x in (g, g.T, boxes))


def grid_conflicts(s: str) -> int:
    """How far an 81-character line is from a valid grid: over the 27 units (rows, columns, boxes),
    the sum of 9 - (distinct digits '1'..'9' in the unit); 0 iff ``is_valid_grid``."""
    s = s.strip()
    if len(s) != 81:
        raise ValueError(f"a grid has 81 characters, got {len(s)}")
    g = np.asarray([int(c) if c in "123456789" else 0 for c in s]).reshape(9, 9)  # a non-digit fills no unit
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return int(sum(9 - len(set(unit.tolist()) - {0}) for x in (g, g.T, boxes) for unit in x))


def sudoku_peers() -> np.ndarray:
    """bool [81, 81]: cells i and j (row-major) share a row, a column or a 3x3 box, i != j (20 per cell)."""
    r, c = np.divmod(np.arange(81), 9)
    box = 3 * (r // 3) + c // 3
    same = (r[:, None] == r) | (c[:, None] == c) | (box[:, None] == box)
    return same & ~np.eye(81, dtype=bool)


def solves(line: str, givens: str) -> bool:
    """True iff ``line`` is a valid grid (``is_valid_grid``) that keeps every given: ``givens`` is 81
    characters, a digit '1'..'9' at each given cell and anything else at the holes."""
    line = line.strip()
    if len(givens) != 81:
        raise ValueError(f"givens have 81 characters, got {len(givens)}")
    return is_valid_grid(line) and all(g not in "123456789" or g == x for g, x in zip(givens, line))


def sudoku_documents(cfg: DataConfig) -> list[Document]:
    """About ``synthetic_tokens`` tokens of grids: ``SUDOKU_DOCS`` documents of equal numbers of
    grids, joined by '\\n' (no trailing newline, so the EOS between documents keeps period 82)."""
    per_doc = int(cfg.synthetic_tokens) // (SUDOKU_PERIOD * SUDOKU_DOCS)
    if per_doc < 1:
        raise DataError(f"data.synthetic_tokens={cfg.synthetic_tokens} is too few for "
                        f"{SUDOKU_DOCS} Sudoku documents of at least one 82-token grid; "
                        f"raise data.synthetic_tokens to at least {SUDOKU_PERIOD * SUDOKU_DOCS}")
    grids = sudoku_grids(per_doc * SUDOKU_DOCS, cfg.seed)
    digits = (grids.reshape(SUDOKU_DOCS, per_doc, 81) + ord("0")).astype(np.uint8)
    lines = np.concatenate([digits, np.full((SUDOKU_DOCS, per_doc, 1), ord("\n"), np.uint8)], axis=2)
    width = len(str(SUDOKU_DOCS - 1))
    return [Document(f"sudoku-{i:0{width}d}", lines[i].tobytes()[:-1].decode("ascii"))
            for i in range(SUDOKU_DOCS)]


# ----------------------------------------------------------------------------- transforms

def swap05(tokens):
    """Swaps positions 0 and 5 of the last axis (windows [..., L], L >= 6); other positions are
    untouched. Pure (returns a new array; works for numpy and jax arrays); an involution."""
    L = tokens.shape[-1]
    if L < 6:
        raise ValueError(f"swap05 needs windows of at least 6 tokens, got {L}")
    perm = np.arange(L)
    perm[0], perm[5] = 5, 0
    return tokens[..., perm]


def apply_transform(name: str, windows: np.ndarray) -> np.ndarray:
    """``data.transform`` applied to every window [N, L] ("none" returns the input)."""
    if name == "none":
        return windows
    if name == "swap05":
        return swap05(windows)
    raise DataError(f"data.transform='{name}' is not one of: {', '.join(TRANSFORMS)}")
