"""Data at scale: the byte-level BPE tokenizer, JSONL sources, `jaxorder data prepare` (TFDS
ArrayRecord, no TensorFlow) and training reads of prepared data with grain worker processes."""
import sys
from pathlib import Path

try:  # the repo root, when pytest runs without the package installed
    import jaxorder  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json

import grain
import numpy as np
import pytest

from jaxorder.config import ConfigError, DataConfig
from jaxorder.data import (
    DataError,
    load_documents,
    load_iterator_state,
    load_tokenizer,
    make_data,
    make_tokenizer,
    restore_iterator,
    save_tokenizer,
)
from jaxorder.data.bpe import SPECIALS, BPETokenizer, train_bpe
from jaxorder.data.prepared import prepare_dataset, read_metadata

NON_ASCII = "naïve café — 日本語 🙂 Ünïcödé straße\n"
BPE_VOCAB = 400


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """BPE cache in a temp dir, never the user's ~/.cache."""
    monkeypatch.setenv("JAXORDER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jaxorder_cache"))


def _corpus(root: Path, n_docs: int = 10, lines: int = 150) -> Path:
    """Distinct pseudo-text documents with some non-ASCII (every window differs)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = "the king queen sword castle river night morning naïve café über straße".split()
    for d in range(n_docs):
        text = "".join(f"doc{d} line{i}: " + " ".join(rng.choice(words, 8)) + f" {rng.integers(10**6)}\n"
                       for i in range(lines))
        (root / f"doc{d:02d}.txt").write_text(text)
    return root


def _cfg(path, **kw) -> DataConfig:
    base = dict(source="text", path=str(path), seq_len=32, batch_size=8, val_fraction=0.2, seed=0,
                tokenizer="bpe", bpe_vocab_size=BPE_VOCAB)
    base.update(kw)
    return DataConfig(**base)


def _take(it, n):
    return [next(it)["tokens"] for _ in range(n)]


def _one_line(e) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    assert isinstance(e.value, ConfigError)
    return msg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("bpe") / "corpus")


@pytest.fixture(scope="module")
def train_texts(corpus):
    return [d.text for d in load_documents(_cfg(corpus))[0]]


@pytest.fixture(scope="module")
def bpe(train_texts):
    return train_bpe(train_texts, BPE_VOCAB)


# ----------------------------------------------------------------------------- BPE tokenizer

def test_bpe_round_trip_ascii_and_non_ascii(bpe):
    V = BPE_VOCAB
    assert bpe.vocab_size == V and bpe.name == "bpe"
    assert (bpe.pad_id, bpe.mask_id, bpe.bos_id, bpe.eos_id) == (V - 4, V - 3, V - 2, V - 1)
    for text in ["the king and the queen\n", NON_ASCII, "", "x", "  spaces  \n\n\ttabs", "<|eos|> <|pad|>"]:
        ids = bpe.encode(text)
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert ids.max(initial=0) < V - 4  # specials never come from text, even "<|eos|>"
        assert bpe.decode(ids) == text
        assert bpe.num_bytes(ids) == len(text.encode("utf-8"))
    ids = bpe.encode("the king the king the king")
    assert len(ids) < len("the king the king the king")  # merges learned
    # decode skips specials; num_bytes counts them 0
    mixed = np.concatenate([[bpe.bos_id], bpe.encode("ab"), [bpe.mask_id, bpe.pad_id], bpe.encode("c"),
                            [bpe.eos_id]])
    assert bpe.decode(mixed) == "abc" and bpe.num_bytes(mixed) == 3
    # a split multi-byte character decodes with U+FFFD, like the byte tokenizer
    e_acute = [i for i in range(V - 4) if bpe.token_bytes(i) == b"\xc3"]
    assert e_acute and bpe.decode(e_acute) == "\ufffd"


def test_bpe_specials_are_the_last_four_ids_in_the_saved_json(bpe, tmp_path):
    obj = json.loads(bpe.to_json())
    added = {t["content"]: t["id"] for t in obj["added_tokens"]}
    V = BPE_VOCAB
    assert added == {SPECIALS[0]: V - 4, SPECIALS[1]: V - 3, SPECIALS[2]: V - 2, SPECIALS[3]: V - 1}
    assert obj["model"]["type"] == "BPE" and len(obj["model"]["vocab"]) == V - 4
    from jaxorder.config import ModelConfig
    from jaxorder.objectives.common import special_ids
    ids = special_ids(ModelConfig(vocab_size=V))
    assert (ids.mask, ids.bos) == (bpe.mask_id, bpe.bos_id)


def test_bpe_deterministic_and_json_round_trip(bpe, train_texts, tmp_path):
    again = train_bpe(train_texts, BPE_VOCAB)
    assert again.to_json() == bpe.to_json()
    save_tokenizer(bpe, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == BPE_VOCAB
    np.testing.assert_array_equal(loaded.encode(NON_ASCII + train_texts[0][:500]),
                                  bpe.encode(NON_ASCII + train_texts[0][:500]))
    # the byte tokenizer saves and loads too
    save_tokenizer(make_tokenizer(DataConfig()), tmp_path / "byte.json")
    assert load_tokenizer(tmp_path / "byte.json").vocab_size == 260
    (tmp_path / "bad.json").write_text('{"model": {"type": "WordPiece"}}')
    with pytest.raises(DataError) as e:
        load_tokenizer(tmp_path / "bad.json")
    _one_line(e)


def test_bpe_too_small_corpus_names_the_fix():
    with pytest.raises(DataError) as e:
        train_bpe(["abab abab"], 1000)
    assert "data.bpe_vocab_size" in _one_line(e)


def test_make_data_bpe_cached_and_bytes_per_token(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXORDER_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _cfg(corpus)
    b = make_data(cfg)
    assert b.tokenizer.vocab_size == BPE_VOCAB and b.info["tokenizer"] == "bpe"
    assert len(list((tmp_path / "cache" / "bpe").glob("*.json"))) == 1
    b2 = make_data(cfg)  # from the cache (eval re-creates the same tokenizer)
    assert b2.tokenizer.to_json() == b.tokenizer.to_json()
    np.testing.assert_array_equal(b2.val_windows, b.val_windows)
    val_docs = load_documents(cfg)[1]
    n_bytes = sum(len(d.text.encode()) for d in val_docs)
    assert b.val_bytes_per_token == pytest.approx(n_bytes / b.info["val_tokens"])
    assert b.val_bytes_per_token > 1.5  # BPE tokens carry several bytes
    assert b.tokenizer.decode(b.val_windows[0]) in "".join(d.text for d in val_docs)
    x = next(b.train_iterator())["tokens"]
    assert x.shape == (8, 32) and x.max() < BPE_VOCAB


def test_bpe_on_sudoku_and_raw_markov_bytes(tmp_path):
    b = make_data(DataConfig(source="sudoku", tokenizer="bpe", bpe_vocab_size=300, synthetic_tokens=20_000,
                             seq_len=32, batch_size=4))
    assert b.tokenizer.vocab_size == 300
    with pytest.raises(DataError) as e:  # symbols >= 128 have no text form
        make_data(DataConfig(source="markov", markov_vocab=200, tokenizer="bpe", bpe_vocab_size=300,
                             synthetic_tokens=20_000, seq_len=32, batch_size=4))
    assert "data.tokenizer=byte" in _one_line(e)


# ----------------------------------------------------------------------------- JSONL source

def test_jsonl_source(tmp_path):
    d = tmp_path / "jl"
    d.mkdir()
    rows = [{"text": f"record {i} " + "é" * i, "meta": i} for i in range(20)] + [{"text": ""}]
    (d / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (d / "b.txt").write_text("a plain text file\n")
    train, val = load_documents(DataConfig(source="text", path=str(d), val_fraction=0.2))
    docs = {x.name: x.text for x in train + val}
    assert len(docs) == 21 and docs["a.jsonl:4"] == "record 3 ééé" and docs["b.txt"] == "a plain text file\n"
    assert len(val) == round(0.2 * 21)


@pytest.mark.parametrize("line", ['{"content": "no text field"}', '["not", "an", "object"]', "{broken json",
                                  '{"text": 5}'])
def test_jsonl_without_text_is_a_one_line_error(tmp_path, line):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        make_data(DataConfig(source="text", path=str(f)))
    msg = _one_line(e)
    assert f"{f}:2" in msg and '"text"' in msg


# ----------------------------------------------------------------------------- prepared data

@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "ds"
    meta = prepare_dataset(_cfg(corpus), out)
    return out, meta


def _pcfg(path, **kw) -> DataConfig:
    return _cfg(path, **{"source": "prepared", **kw})


def test_prepare_writes_tfds_array_record_metadata_and_tokenizer(prepared, corpus):
    out, meta = prepared
    assert (out / "metadata.json").is_file() and (out / "tokenizer.json").is_file()
    assert list((out / meta["tfds_dir"]).glob("*.array_record-*"))
    assert (out / meta["tfds_dir"] / "dataset_info.json").is_file()
    assert read_metadata(out) == meta
    ref = make_data(_cfg(corpus))
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == BPE_VOCAB and meta["seq_len"] == 32
    assert meta["val_bytes_per_token"] == pytest.approx(ref.val_bytes_per_token)
    for k in ("train_tokens", "val_tokens", "train_windows", "val_windows", "val_names"):
        assert meta[k] == ref.info[k]
    assert load_tokenizer(out / "tokenizer.json").to_json() == ref.tokenizer.to_json()


def test_prepared_reads_exactly_the_in_memory_windows_and_batches(prepared, corpus):
    out, _ = prepared
    ref, p = make_data(_cfg(corpus)), make_data(_pcfg(out))
    np.testing.assert_array_equal(p.train_windows[np.arange(len(p.train_windows))], ref.train_windows)
    np.testing.assert_array_equal(p.val_windows[np.arange(len(p.val_windows))], ref.val_windows)
    assert p.val_bytes_per_token == pytest.approx(ref.val_bytes_per_token)
    assert p.info["steps_per_epoch"] == ref.info["steps_per_epoch"]
    for x, y in zip(_take(p.train_iterator(), 6), _take(ref.train_iterator(), 6)):
        assert x.dtype == np.int32
        np.testing.assert_array_equal(x, y)
    for x, y in zip(p.val_batches(3), ref.val_batches(3), strict=True):
        np.testing.assert_array_equal(x, y)
    # data.transform applies when reading; data.seed reshuffles
    sw = make_data(_pcfg(out, transform="swap05"))
    np.testing.assert_array_equal(sw.val_windows[[0]][0][[0, 5]], ref.val_windows[0][[5, 0]])
    assert not np.array_equal(next(make_data(_pcfg(out, seed=1)).train_iterator())["tokens"],
                              next(p.train_iterator())["tokens"])


def test_prepared_iterator_restores_exactly_with_two_workers(prepared, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    out, _ = prepared
    b = make_data(_pcfg(out, num_workers=2))
    assert b.num_workers == 2
    reference = _take(make_data(_pcfg(out)).train_iterator(), 9)  # in-process reading
    it = b.train_iterator()
    try:
        first = _take(it, 5)
        mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",),
                                     options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True))
        mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        expected = _take(it, 4)  # advancing right after an async save does not change what was saved
        mngr.wait_until_finished()
        mngr.close()
    finally:
        it.close()
    for x, y in zip(first + expected, reference, strict=True):
        np.testing.assert_array_equal(x, y)
    assert (tmp_path / "ckpt" / "5" / "data" / "process_0-of-1.json").is_file()
    restored = b.train_iterator()
    try:
        mngr2 = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
        mngr2.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
        mngr2.close()
        assert restored.get_state() == {"next_index": 5}
        for x, y in zip(_take(restored, 4), expected, strict=True):
            np.testing.assert_array_equal(x, y)
    finally:
        restored.close()
    # the same state restores with any worker count (here: in-process)
    plain = make_data(_pcfg(out)).train_iterator()
    plain.set_state({"next_index": 5})
    np.testing.assert_array_equal(next(plain)["tokens"], expected[0])


def test_prepared_two_process_slices_and_one_to_two_process_resume(prepared, tmp_path):
    out, _ = prepared
    single = make_data(_pcfg(out)).train_iterator()
    p0 = make_data(_pcfg(out), process_index=0, process_count=2).train_iterator()
    p1 = make_data(_pcfg(out), process_index=1, process_count=2).train_iterator()
    for _ in range(3):
        a, b = next(p0)["tokens"], next(p1)["tokens"]
        assert a.shape == b.shape == (4, 32)
        np.testing.assert_array_equal(np.concatenate([a, b]), next(single)["tokens"])
    # a 1-process checkpoint of step 3 resumes in 2 processes: each takes its rows of step 3's batch
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "process_0-of-1.json").write_text(json.dumps(single.get_state()))
    expected = next(single)["tokens"]
    halves = []
    for p in range(2):
        it = make_data(_pcfg(out), process_index=p, process_count=2).train_iterator()
        restore_iterator(it, data_dir, p, 2)
        halves.append(next(it)["tokens"])
    np.testing.assert_array_equal(np.concatenate(halves), expected)
    # process-specific states (not ours) are refused with a one-line error
    (data_dir / "process_0-of-1.json").write_text(json.dumps({"workers_state": {"0": 1}}))
    with pytest.raises(DataError) as e:
        load_iterator_state(data_dir, 1, 2)
    assert "1 process(es)" in _one_line(e)
    (data_dir / "process_0-of-1.json").unlink()
    with pytest.raises(DataError) as e:
        load_iterator_state(data_dir, 0, 2)
    _one_line(e)


def test_prepared_bad_inputs_are_one_line_errors(prepared, tmp_path, corpus):
    out, _ = prepared
    with pytest.raises(DataError) as e:
        make_data(_pcfg(tmp_path / "missing"))
    assert "jaxorder data prepare" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        make_data(_pcfg(tmp_path / "empty"))
    assert "metadata.json" in _one_line(e)
    with pytest.raises(DataError) as e:
        make_data(_pcfg(out, seq_len=64))
    msg = _one_line(e)
    assert "data.seq_len=64" in msg and "seq_len=32" in msg
    with pytest.raises(DataError) as e:
        make_data(_pcfg(out, tokenizer="byte"))
    assert "data.tokenizer=bpe" in _one_line(e)
    with pytest.raises(DataError) as e:
        make_data(_pcfg(out, bpe_vocab_size=512))
    assert f"data.bpe_vocab_size={BPE_VOCAB}" in _one_line(e)
    with pytest.raises(DataError) as e:
        make_data(_pcfg(out, batch_size=100_000))
    assert "data.batch_size" in _one_line(e)
    with pytest.raises(DataError) as e:  # never overwrites
        prepare_dataset(_cfg(corpus), out)
    assert "--out" in _one_line(e)
    with pytest.raises(DataError) as e:
        prepare_dataset(_cfg(corpus, transform="swap05"), tmp_path / "x")
    _one_line(e)


def test_cli_data_prepare_byte_markov_and_train_vocab_check(tmp_path, capsys):
    from jaxorder.cli import main

    out = tmp_path / "markov_ds"
    rc = main(["data", "prepare", "--out", str(out), "--json", "data.source=markov",
               "data.synthetic_tokens=40000", "data.seq_len=64"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer"] == "byte" and summary["vocab_size"] == 260
    assert summary["entropy_floor_bits_per_byte"] > 0
    assert f"data.path={out}" in summary["overrides"]
    b = make_data(DataConfig(source="prepared", path=str(out), seq_len=64, batch_size=4))
    assert b.info["entropy_floor_bits_per_byte"] == summary["entropy_floor_bits_per_byte"]
    assert b.val_bytes_per_token == pytest.approx(1.0, abs=1e-3)
    # errors: one line on stderr, exit code 2
    rc = main(["data", "prepare", "--out", str(out), "data.source=markov"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 1
    # training refuses a model whose vocabulary does not match the prepared tokenizer
    from jaxorder import config as config_lib
    from jaxorder.training.loop import train

    cfg = config_lib.load(None, ["data.source=prepared", f"data.path={out}", "data.seq_len=64",
                                 "model.vocab_size=300"])
    with pytest.raises(ConfigError) as e:
        train(cfg, tmp_path / "run")
    assert "model.vocab_size=260" in _one_line(e)
