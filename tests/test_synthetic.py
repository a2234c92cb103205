"""Tests of jaxorder.data.synthetic: the Markov chain (exact entropy rate vs Monte Carlo),
Sudoku grids, the swap(0,5) transform, and both sources/the transform through make_data."""
import sys
from pathlib import Path

try:  # the repo root, when pytest runs without the package installed
    import jaxorder  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses
import math
import time

import numpy as np
import pytest

from jaxorder.config import DataConfig
from jaxorder.data import (
    Document,
    is_valid_grid,
    load_documents,
    make_data,
    markov_entropy_rate_bits,
    sources,
    swap05,
    synthetic,
)


def _markov(**kw) -> DataConfig:
    return DataConfig(**{"source": "markov", **kw})


def _runs(cfg: DataConfig) -> np.ndarray:
    """[docs, length] int64 symbols of the Markov documents of cfg."""
    docs = synthetic.markov_documents(cfg)
    assert len({len(d.raw) for d in docs}) == 1 and all(d.text == "" for d in docs)
    return np.stack([np.frombuffer(d.raw, dtype=np.uint8) for d in docs]).astype(np.int64)


# ----------------------------------------------------------------------------- Markov chain

@pytest.mark.parametrize("vocab,temperature,sparsity", [(16, 1.0, 0.0), (64, 0.5, 0.5), (256, 2.0, 0.9)])
def test_markov_entropy_rate_matches_monte_carlo(vocab, temperature, sparsity):
    cfg = _markov(markov_vocab=vocab, markov_temperature=temperature, markov_sparsity=sparsity)
    H = markov_entropy_rate_bits(cfg)
    P, pi = synthetic.markov_chain(cfg)
    assert 0.5 < H < math.log2(vocab)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi @ P, pi, atol=1e-12)
    # every row has exactly V - round(sparsity V) allowed transitions
    assert (np.count_nonzero(P, axis=1) == vocab - round(sparsity * vocab)).all()
    x = _runs(cfg)
    assert x.size > 1_900_000 and x.max() < vocab
    # unbiased Monte Carlo estimate: mean -log2 P(x_t | x_{t-1}) along the generated chains
    prev, nxt = x[:, :-1].ravel(), x[:, 1:].ravel()
    p = P[prev, nxt]
    assert (p > 0).all()  # no zero-probability transition is ever sampled
    assert abs(-np.log2(p).mean() - H) < 0.01
    # the chains are stationary: symbol frequencies match pi
    freq = np.bincount(x.ravel(), minlength=vocab) / x.size
    assert np.abs(freq - pi).max() < 0.005
    if vocab <= 16:  # plug-in conditional entropy from transition counts (bias ~ V^2 / N)
        counts = np.zeros((vocab, vocab))
        np.add.at(counts, (prev, nxt), 1)
        Phat = counts / counts.sum(axis=1, keepdims=True)
        w = counts.sum(axis=1) / counts.sum()
        H_hat = -(w * np.where(Phat > 0, Phat * np.log2(np.where(Phat > 0, Phat, 1)), 0).sum(axis=1)).sum()
        assert abs(H_hat - H) < 0.01
        assert np.abs(Phat - P).max() < 0.01


def test_markov_closed_forms_deterministic_and_uniform():
    # sparsity -> 1: one transition per row, a single cycle through all states, entropy 0
    cfg = _markov(markov_vocab=16, markov_sparsity=0.99, synthetic_tokens=20_000)
    P, pi = synthetic.markov_chain(cfg)
    assert (np.count_nonzero(P, axis=1) == 1).all() and (P.max(axis=1) == 1.0).all()
    nxt = P.argmax(axis=1)
    assert sorted(nxt) == list(range(16))  # a permutation ...
    s, seen = 0, set()
    for _ in range(16):
        seen.add(s)
        s = nxt[s]
    assert seen == set(range(16))  # ... that is one cycle (irreducible)
    np.testing.assert_allclose(pi, 1 / 16, atol=1e-12)
    assert markov_entropy_rate_bits(cfg) == 0.0
    x = _runs(cfg)
    np.testing.assert_array_equal(x[:, 1:], nxt[x[:, :-1]])
    # a huge temperature: the uniform chain, entropy log2 V
    for V in (2, 16, 256):
        cfgu = _markov(markov_vocab=V, markov_temperature=1e9)
        assert markov_entropy_rate_bits(cfgu) == pytest.approx(math.log2(V), abs=1e-6)


def test_markov_chain_is_irreducible_and_aperiodic():
    for sparsity in (0.0, 0.5, 0.8):
        P, _ = synthetic.markov_chain(_markov(markov_vocab=16, markov_sparsity=sparsity, seed=3))
        A = (P > 0).astype(np.int64)
        R = A.copy()
        for _ in range(6):  # A^(2^6) > 0 everywhere: a primitive (irreducible, aperiodic) chain
            R = np.minimum(R @ R, 1)
        assert (R > 0).all(), sparsity


def test_markov_determinism_by_seed():
    cfg = _markov(markov_vocab=32, synthetic_tokens=100_000)
    a, b = _runs(cfg), _runs(cfg)
    np.testing.assert_array_equal(a, b)
    P = synthetic.markov_chain(cfg)[0]
    # the matrix depends on the seed and chain fields only, not on how much text is drawn
    fewer = dataclasses.replace(cfg, synthetic_tokens=5000)
    np.testing.assert_array_equal(P, synthetic.markov_chain(fewer)[0])
    other = dataclasses.replace(cfg, seed=1)
    assert not np.allclose(P, synthetic.markov_chain(other)[0])
    assert markov_entropy_rate_bits(other) != markov_entropy_rate_bits(cfg)
    assert (_runs(other) != a).mean() > 0.5


def test_markov_generation_is_fast():
    cfg = _markov(markov_vocab=256)
    t = time.perf_counter()
    docs = synthetic.markov_documents(cfg)
    elapsed = time.perf_counter() - t
    assert sum(len(d.raw) for d in docs) > 1_990_000
    assert elapsed < 4.0  # ~0.3 s on 2 CPU cores; the bar is loose for loaded machines


# ----------------------------------------------------------------------------- Sudoku

def _change_cell(s: str, i: int) -> str:
    return s[:i] + str(int(s[i]) % 9 + 1) + s[i + 1:]


def test_sudoku_grids_valid_and_diverse():
    docs = synthetic.sudoku_documents(DataConfig(source="sudoku"))
    lines = [line for d in docs for line in d.text.split("\n")]
    assert all(not d.text.endswith("\n") for d in docs)
    assert len(lines) == synthetic.SUDOKU_DOCS * (2_000_000 // (82 * synthetic.SUDOKU_DOCS))
    assert all(len(line) == 81 for line in lines)
    assert all(is_valid_grid(line) for line in lines)
    assert len(set(lines)) > 0.999 * len(lines)
    # every digit in every cell occurs (relabelling + permutations spread them out)
    g = np.array([list(map(int, line)) for line in lines[:2000]])
    assert all(len(set(g[:, c])) == 9 for c in range(81))
    # deterministic by seed
    np.testing.assert_array_equal(synthetic.sudoku_grids(50, 7), synthetic.sudoku_grids(50, 7))
    assert not np.array_equal(synthetic.sudoku_grids(50, 7), synthetic.sudoku_grids(50, 8))


def test_is_valid_grid_rejects_broken_grids():
    good = synthetic.grid_to_string(synthetic.sudoku_grids(1, 0)[0])
    assert is_valid_grid(good) and is_valid_grid(good + "\n")
    for i in (0, 5, 40, 80):
        assert not is_valid_grid(_change_cell(good, i))
    assert not is_valid_grid(good[:80])
    assert not is_valid_grid(good + "1")
    assert not is_valid_grid("0" + good[1:])
    assert not is_valid_grid("x" + good[1:])
    # rows and columns are permutations but the 3x3 boxes are not
    latin = "".join(str((r + c) % 9 + 1) for r in range(9) for c in range(9))
    assert not is_valid_grid(latin)
    rows = [good[9 * r:9 * r + 9] for r in range(9)]
    # swapping two rows within a band keeps a valid grid; across bands, rows and columns stay
    # permutations but the boxes break
    assert is_valid_grid("".join([rows[1], rows[0]] + rows[2:]))
    assert not is_valid_grid("".join([rows[3]] + rows[1:3] + [rows[0]] + rows[4:]))
    assert not is_valid_grid("".join([rows[0][1:] + rows[0][0]] + rows[1:]))  # a rotated row


def test_sudoku_peers_hand_counted():
    peers = synthetic.sudoku_peers()
    assert peers.shape == (81, 81) and (peers == peers.T).all() and not peers.diagonal().any()
    assert (peers.sum(axis=1) == 20).all()
    assert np.flatnonzero(peers[0]).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 18, 19, 20, 27, 36, 45,
                                                  54, 63, 72]
    assert np.flatnonzero(peers[40]).tolist() == [4, 13, 22, 30, 31, 32, 36, 37, 38, 39, 41, 42, 43, 44, 48,
                                                   49, 50, 58, 67, 76]


def test_solves_needs_a_valid_grid_that_keeps_the_givens():
    good = synthetic.grid_to_string(synthetic.sudoku_grids(1, 0)[0])
    givens = "".join(c if i % 3 == 0 else "0" for i, c in enumerate(good))
    assert synthetic.solves(good, givens) and synthetic.solves(good + "\n", givens)
    relabelled = "".join(str(int(c) % 9 + 1) for c in good)  # valid, but every given changed
    assert is_valid_grid(relabelled) and not synthetic.solves(relabelled, givens)
    assert synthetic.solves(relabelled, "." * 81)  # no givens: any valid grid
    assert not synthetic.solves(_change_cell(good, 1), givens)  # keeps the givens, not valid
    with pytest.raises(ValueError, match="81"):
        synthetic.solves(good, givens[:80])


def test_sudoku_windows_hold_one_grid_each():
    b = make_data(DataConfig(source="sudoku", seq_len=82))
    tok = b.tokenizer
    it = b.train_iterator()
    x = np.concatenate([next(it)["tokens"] for _ in range(4)])
    for rows in (x, np.concatenate(b.val_batches(4))):
        assert ((rows[:, -1] == ord("\n")) | (rows[:, -1] == tok.eos_id)).all()
        assert all(is_valid_grid(tok.decode(r[:81])) for r in rows)
    assert b.info["entropy_floor_bits_per_byte"] is None


# ----------------------------------------------------------------------------- swap05

def test_swap05_involution_and_only_positions_0_and_5():
    x = np.random.default_rng(0).integers(0, 1000, size=(3, 4, 10))
    x0 = x.copy()
    y = swap05(x)
    np.testing.assert_array_equal(x, x0)  # pure: the input is untouched
    np.testing.assert_array_equal(y[..., 0], x[..., 5])
    np.testing.assert_array_equal(y[..., 5], x[..., 0])
    others = [i for i in range(10) if i not in (0, 5)]
    np.testing.assert_array_equal(y[..., others], x[..., others])
    np.testing.assert_array_equal(swap05(y), x)
    np.testing.assert_array_equal(swap05(np.arange(6)), [5, 1, 2, 3, 4, 0])
    with pytest.raises(ValueError):
        swap05(np.arange(5))


def test_pipeline_applies_swap05_to_train_and_val():
    cfg = _markov(markov_vocab=64, synthetic_tokens=200_000, seq_len=32, batch_size=8)
    plain = make_data(cfg)
    swapped = make_data(dataclasses.replace(cfg, transform="swap05"))
    assert swapped.info["transform"] == "swap05" and plain.info["transform"] == "none"
    it_p, it_s = plain.train_iterator(), swapped.train_iterator()
    for _ in range(3):
        a, b = next(it_p)["tokens"], next(it_s)["tokens"]
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(swap05(a), b)
    for a, b in zip(plain.val_batches(3), swapped.val_batches(3), strict=True):
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(swap05(a), b)
    # the floor is kept: a permutation of positions does not change a window's entropy
    assert swapped.info["entropy_floor_bits_per_byte"] == plain.info["entropy_floor_bits_per_byte"]
    # text sources too
    s = make_data(DataConfig(source="sudoku", seq_len=82, transform="swap05"))
    row = next(s.train_iterator())["tokens"][0]
    assert not is_valid_grid(s.tokenizer.decode(row[:81]))  # columns 0 and 5 now repeat a digit
    assert is_valid_grid(s.tokenizer.decode(swap05(row)[:81]))


# ----------------------------------------------------------------------------- make_data

def test_make_data_markov_default_sizes_raw_bytes_and_floor():
    cfg = _markov(markov_vocab=256)
    b = make_data(cfg)
    info = b.info
    assert info["entropy_floor_bits_per_byte"] == pytest.approx(markov_entropy_rate_bits(cfg))
    train, val = load_documents(cfg)
    assert info["train_documents"] == len(train) and info["val_documents"] == len(val) >= 2
    # raw bytes >= 128 stay one token each (no UTF-8 blow-up): tokens = symbols + eos separators
    assert info["train_tokens"] == sum(len(d.raw) for d in train) + len(train) - 1
    assert 1_990_000 <= info["train_tokens"] + info["val_tokens"] <= 2_000_000 + 200
    x = next(b.train_iterator())["tokens"]
    assert x.shape == (32, 128) and x.dtype == np.int32 and x.max() >= 128
    assert len(b.val_batches(4)) == 4
    assert b.val_bytes_per_token == pytest.approx(1.0, abs=1e-3)
    # the default vocabulary through the default config
    default = DataConfig(source="markov")
    d = make_data(default)
    assert d.info["entropy_floor_bits_per_byte"] == pytest.approx(markov_entropy_rate_bits(default))
    x = next(d.train_iterator())["tokens"]
    assert ((x < 16) | (x == d.tokenizer.eos_id)).all() and len(np.unique(x[x < 16])) == 16


def test_make_data_sudoku_default_sizes():
    b = make_data(DataConfig(source="sudoku"))
    x = next(b.train_iterator())["tokens"]
    assert x.shape == (32, 128) and x.dtype == np.int32
    allowed = set(range(ord("1"), ord("9") + 1)) | {ord("\n"), b.tokenizer.eos_id}
    assert set(np.unique(x).tolist()) <= allowed
    assert len(b.val_batches(4)) == 4
    assert b.info["entropy_floor_bits_per_byte"] is None and b.info["val_documents"] == 2


def test_raw_document_alone_is_split_by_bytes():
    doc = Document("one", "", raw=bytes(range(200)) * 5)
    train, val = sources.split_documents([doc], 0.1)
    assert len(train[0].raw) == 900 and len(val[0].raw) == 100
    assert train[0].raw + val[0].raw == doc.raw
