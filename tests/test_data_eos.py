"""data.eos: one document per window, EOS after it, EOS padding; the l2r loss and the yardstick's
bytes denominator on such windows, against hand computations."""
import sys
from pathlib import Path

try:  # the repo root, when pytest runs without the package installed
    import jaxorder  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxorder import config as config_lib
from jaxorder import model
from jaxorder.config import DataConfig
from jaxorder.data import ByteTokenizer, Document, make_data
from jaxorder.data.documents import document_windows, make_windows
from jaxorder.data.errors import DataError
from jaxorder.data.prepared import check_compatible
from jaxorder.evaluation.yardstick import evaluate
from jaxorder.objectives import l2r, r2l
from jaxorder.objectives.common import after_first_eos

EOS = ByteTokenizer().eos_id
TINY = ("model.d_model=16", "model.n_layers=1", "model.n_heads=2", "data.seq_len=8", "model.max_len=8")


def test_windows_hold_document_eos_then_padding():
    """ab -> [a b EOS EOS ...]; a 7-byte doc fills a window with its EOS last; 8 bytes need a second
    window that is all EOS (only the true end gets one); 10 bytes: 8 plain, then 2, EOS, padding."""
    docs = [Document("a", "ab"), Document("b", "x" * 7), Document("c", "y" * 8), Document("d", "z" * 10)]
    w = document_windows(docs, ByteTokenizer(), 8)
    e = EOS
    want = [[97, 98, e, e, e, e, e, e], [120] * 7 + [e], [121] * 8, [e] * 8, [122] * 8,
            [122, 122, e, e, e, e, e, e]]
    np.testing.assert_array_equal(w, np.array(want))


def test_make_windows_bytes_per_token_counts_text_bytes_over_all_window_tokens():
    docs = [Document("a", "ab"), Document("b", "héllo")]  # é is 2 UTF-8 bytes: 8 text bytes in all
    windows, tokens, bpt = make_windows(docs, ByteTokenizer(), 8, eos=True)
    assert windows.shape == (2, 8) and tokens == 16
    assert bpt == pytest.approx(8 / 16)  # EOS padding stands for no bytes
    packed, packed_tokens, packed_bpt = make_windows(docs, ByteTokenizer(), 4, eos=False)
    assert packed_tokens == 2 + 1 + 6 and packed_bpt == pytest.approx(8 / 9) and packed.shape == (2, 4)


def test_make_data_eos_windows_start_at_documents(tmp_path):
    for i in range(8):
        (tmp_path / f"d{i}.txt").write_text(f"doc {i}")
    cfg = DataConfig(source="text", path=str(tmp_path), seq_len=8, batch_size=2, val_fraction=0.25, eos=True)
    b = make_data(cfg)
    assert b.info["eos"] and b.train_windows.shape == (6, 8)
    for row in np.asarray(b.train_windows):
        assert bytes(row[:5].astype(np.uint8)).startswith(b"doc ") and (row[5:] == EOS).all()
    assert b.val_bytes_per_token == pytest.approx(5 / 8)
    packed = make_data(DataConfig(source="text", path=str(tmp_path), seq_len=8, batch_size=2,
                                  val_fraction=0.25))
    assert not packed.info["eos"] and packed.info["train_tokens"] == 6 * 5 + 5


def test_prepared_dataset_must_match_data_eos():
    meta = {"seq_len": 8, "tokenizer": "byte", "vocab_size": 260}
    with pytest.raises(DataError, match="data.eos=True does not match.*prepare the data again"):
        check_compatible(DataConfig(seq_len=8, eos=True), meta)
    check_compatible(DataConfig(seq_len=8), meta)  # datasets from before data.eos were packed
    check_compatible(DataConfig(seq_len=8, eos=True), {**meta, "eos": True})


def test_after_first_eos():
    t = jnp.array([[1, EOS, 2, EOS], [EOS, EOS, 3, 4], [1, 2, 3, 4]])
    np.testing.assert_array_equal(after_first_eos(t, EOS), [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.load(None, (*TINY, "objective.name=l2r", "data.eos=true"))
    return cfg, model.init_params(cfg.model, jax.random.key(0))


def _hand_token_nll(params, cfg, row):
    """-log p(x_i | BOS, x_<i) for each i from the full causal pass (the unmasked chain rule, checked
    against brute force in test_objectives)."""
    return np.asarray(l2r.sequence_token_nll(params, jnp.array([row], jnp.int32), cfg)[0])


def test_l2r_nll_and_loss_leave_out_the_padding_after_the_first_eos(tiny):
    """Doc [5, 6], EOS, padding: nll sums the first 3 targets only; r2l and data.eos=false sum all."""
    cfg, params = tiny
    rows = [[5, 6, EOS, EOS, EOS, EOS, EOS, EOS], [1, 2, 3, 4, 5, 6, 7, 8]]
    hand = [_hand_token_nll(params, cfg, r) for r in rows]
    batch = {"tokens": jnp.array(rows, jnp.int32)}
    nll_B = l2r.nll(params, batch, jax.random.key(0), cfg)
    np.testing.assert_allclose(nll_B, [hand[0][:3].sum(), hand[1].sum()], rtol=1e-5)
    loss, _ = l2r.loss(params, batch, jax.random.key(0), cfg)
    assert float(loss) == pytest.approx((hand[0][:3].sum() + hand[1].sum()) / 11, rel=1e-5)
    packed = config_lib.load(None, (*TINY, "objective.name=l2r"))
    np.testing.assert_allclose(l2r.nll(params, batch, jax.random.key(0), packed), [h.sum() for h in hand],
                               rtol=1e-5)
    rev = [_hand_token_nll(params, cfg, r[::-1]).sum() for r in rows]
    np.testing.assert_allclose(r2l.nll(params, batch, jax.random.key(0), cfg), rev, rtol=1e-5)


def test_yardstick_bits_per_byte_is_nats_over_text_bytes(tiny):
    """bits/byte = sum of window nll / (ln 2 * text bytes) when bytes per token counts every window
    token (EOS padding included) and EOS as no bytes."""
    cfg, params = tiny
    docs = [Document("a", "ab"), Document("b", "cdefg"), Document("c", "hij")]
    windows, _, bpt = make_windows(docs, ByteTokenizer(), 8, eos=True)
    res = evaluate(params, cfg, [windows.astype(np.int32)], bpt)
    hand = sum(_hand_token_nll(params, cfg, list(r))[:list(r).index(EOS) + 1].sum() for r in windows)
    assert res["bpb"] == pytest.approx(hand / (math.log(2) * 10), rel=1e-5)
