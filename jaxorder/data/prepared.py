"""Prepared datasets: tokenized, packed windows in a TFDS ArrayRecord dataset (no TensorFlow).

``jaxorder data prepare --out DIR [data.* overrides]`` (``prepare_dataset``) loads the documents of
any source (embedded corpus, text/JSONL files, synthetic task), splits them by document exactly as
``make_data`` does, builds the tokenizer (``data.tokenizer=bpe``: learned from the training
documents), packs each split into one stream with EOS between documents and cuts it into windows of
``data.seq_len`` tokens (``data.eos``: one document per window, then EOS padding; recorded as ``eos``
in the metadata, and a training config must match it) - the very windows of the in-memory pipeline -
and writes::

    DIR/metadata.json      format, tokenizer, vocab_size, seq_len, val_bytes_per_token, counts,
                           entropy floor (markov), the data config it was made from
    DIR/tokenizer.json     the tokenizer (HF tokenizer.json for BPE; a descriptor for bytes)
    DIR/tfds/jaxorder_windows/1.0.0/   TFDS dataset (GeneratorBasedBuilder, file_format=array_record,
                           shuffling disabled so record i is window i): splits ``train`` and
                           ``validation``, feature ``tokens`` [seq_len] (uint16, or int32 for
                           vocabularies > 65536)

``data.source=prepared data.path=DIR`` (``make_prepared_data``) reads it back through
``tfds.builder_from_directory(...).as_data_source()`` (random access, no TensorFlow) into the same
grain pipeline as in-memory data: same shuffle (``data.seed``), same global batches, process p of P
reads only rows [p*B/P, (p+1)*B/P) of every global batch, ``data.num_workers`` grain worker
processes, iterator state ``{"next_index": step}``. ``data.transform`` is applied when reading (the
stored windows are untransformed), so one prepared dataset serves both plain and swap05 runs.
``data.seq_len`` and the tokenizer settings must match the dataset's; other data.* fields that
pick or split the source are ignored (they were fixed at prepare time).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxorder.config import DataConfig
from jaxorder.data.bundle import DataBundle, too_little_val
from jaxorder.data.documents import document_texts, make_windows
from jaxorder.data.errors import DataError
from jaxorder.data.sources import load_documents
from jaxorder.data.synthetic import apply_transform, markov_entropy_rate_bits
from jaxorder.data.tokenizer import load_tokenizer, make_tokenizer, save_tokenizer
from jaxorder.paths import as_path, is_url
from jaxorder.platform import progress

FORMAT = "jaxorder-prepared"
FORMAT_VERSION = 1
METADATA = "metadata.json"
TOKENIZER = "tokenizer.json"
TFDS_SUBDIR = "tfds"
BUILDER_NAME = "jaxorder_windows"
SPLITS = ("train", "validation")


# ----------------------------------------------------------------------------- writing

@functools.cache
def _builder_class():
    import tensorflow_datasets as tfds

    class JaxorderWindows(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Fixed-length token windows, one record each, in window order."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Packed token windows made by `jaxorder data prepare`."}

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):  # no dataset code directory (no checksums, no metadata files)
            return None

        def __init__(self, *, windows: dict[str, np.ndarray], seq_len: int, dtype: str, **kwargs):
            self._windows, self._seq_len, self._dtype = windows, int(seq_len), np.dtype(dtype)
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Token windows packed by jaxorder (EOS between documents), in stream order.",
                features=tfds.features.FeaturesDict({
                    "tokens": tfds.features.Tensor(shape=(self._seq_len,), dtype=self._dtype,
                                                   encoding=tfds.features.Encoding.BYTES)}),
                disable_shuffling=True,  # record i is window i: the in-memory pipeline's order
            )

        def _split_generators(self, dl_manager):  # noqa: ARG002 - nothing to download
            return {name: self._generate_examples(w) for name, w in self._windows.items()}

        def _generate_examples(self, windows: np.ndarray):
            for i in range(len(windows)):
                yield i, {"tokens": windows[i]}

    return JaxorderWindows


def prepare_dataset(cfg: DataConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Builds the prepared dataset of ``cfg`` in the new directory ``out``; returns its metadata."""
    if cfg.source == "prepared":
        raise DataError("data prepare needs a document source (data.source=shakespeare, text, markov, "
                        "sudoku or multiply), not data.source=prepared")
    if cfg.transform != "none":
        raise DataError(f"data.transform={cfg.transform} is applied when training from a prepared dataset; "
                        f"prepare without it (data.transform=none) and set it in the training config")
    if is_url(out):  # TFDS builds in a temporary directory that is renamed: a local operation
        raise DataError(f"--out {out}: data prepare writes a local directory; prepare it locally and copy "
                        f"it to object storage (gcloud storage cp -r DIR {out})")
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not an empty directory; choose a new --out "
                        f"or delete it")
    L = cfg.seq_len
    train_docs, val_docs = load_documents(cfg)
    tokenizer = make_tokenizer(cfg, document_texts(train_docs) if cfg.tokenizer != "byte" else None)
    train, train_tokens, _ = make_windows(train_docs, tokenizer, L, cfg.eos)
    if cfg.max_train_tokens:  # the same cut as the in-memory pipeline
        train = train[:cfg.max_train_tokens // L]
        train_tokens = min(train_tokens, cfg.max_train_tokens)
    val, val_tokens, val_bytes_per_token = make_windows(val_docs, tokenizer, L, cfg.eos)
    windows = {"train": train, "validation": val}
    for split, tokens in (("train", train_tokens), ("validation", val_tokens)):
        if len(windows[split]) == 0:
            raise DataError(f"the {split} text has {tokens} tokens, less than one window of "
                            f"data.seq_len={L}; lower data.seq_len or add text")
    dtype = str(train.dtype)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "special_ids": {"pad": tokenizer.pad_id, "mask": tokenizer.mask_id, "bos": tokenizer.bos_id,
                        "eos": tokenizer.eos_id},
        "seq_len": L,
        "dtype": dtype,
        "val_bytes_per_token": val_bytes_per_token,
        "eos": cfg.eos,
        "entropy_floor_bits_per_byte": markov_entropy_rate_bits(cfg) if cfg.source == "markov" else None,
        "source": cfg.source,
        "data_config": dataclasses.asdict(cfg),
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "val_names": [d.name for d in val_docs],
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "train_windows": len(windows["train"]),
        "val_windows": len(windows["validation"]),
        "tfds_dir": f"{TFDS_SUBDIR}/{BUILDER_NAME}/1.0.0",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_tfds(tmp / TFDS_SUBDIR, windows, L, dtype)
        save_tokenizer(tokenizer, tmp / TOKENIZER)
        (tmp / METADATA).write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write_tfds(data_dir: Path, windows: dict[str, np.ndarray], seq_len: int, dtype: str) -> None:
    import tensorflow_datasets as tfds

    if progress.enabled():  # tfds draws its own bars (writing the splits) on a terminal
        tfds.enable_progress_bar()
    else:
        tfds.disable_progress_bar()
    builder = _builder_class()(windows=windows, seq_len=seq_len, dtype=dtype, data_dir=str(data_dir),
                               file_format="array_record")
    with contextlib.redirect_stdout(sys.stderr):  # tfds prints progress lines; keep stdout for results
        builder.download_and_prepare(
            download_dir=str(data_dir / "downloads"),
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    shutil.rmtree(data_dir / "downloads", ignore_errors=True)


# ----------------------------------------------------------------------------- reading

def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the prepared dataset at ``path``; DataError (one line) if it is not one."""
    root = as_path(path)
    make = f"make one with `jaxorder data prepare --out {root} [data.* overrides]`"
    if not root.is_dir():
        raise DataError(f"data.path={path} does not exist (data.source=prepared needs a "
                        f"prepared dataset); {make}")
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise DataError(f"data.path={path} is not a prepared dataset (no {METADATA}); {make}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path} is unreadable ({type(e).__name__}); "
                        f"prepare the dataset again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path} is not jaxorder prepared-data metadata; prepare the dataset again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{root} has prepared-data format version {meta.get('format_version')}, this "
                        f"jaxorder reads version {FORMAT_VERSION}; prepare the dataset again")
    return meta


class RecordWindows:
    """Random-access windows of one split of a prepared dataset: ``len`` and ``[int array] ->
    int array [k, seq_len]`` (``data.transform`` applied), like the in-memory window arrays.
    Picklable (the TFDS ArrayRecord data source is), so grain worker processes can read it."""

    def __init__(self, source: Any, seq_len: int, transform: str = "none"):
        self._source, self._seq_len, self._transform = source, int(seq_len), transform

    def __len__(self) -> int:
        return len(self._source)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self._seq_len)

    def __getitem__(self, idx: Any) -> np.ndarray:
        arr = np.asarray(idx)
        if arr.ndim == 0:
            return self[arr[None]][0]
        if arr.dtype == bool:
            arr = np.flatnonzero(arr)
        arr = arr.astype(np.int64).ravel()
        if len(arr) == 0:
            return np.zeros((0, self._seq_len), dtype=np.int32)
        n = len(self)
        arr = np.where(arr < 0, arr + n, arr)
        if arr.min() < 0 or arr.max() >= n:
            raise IndexError(f"window index out of range [0, {n})")
        records = self._source.__getitems__(arr.tolist())
        windows = np.stack([np.asarray(r["tokens"]) for r in records])
        return apply_transform(self._transform, windows)


def open_windows(path: str | os.PathLike, meta: dict[str, Any],
                 transform: str = "none") -> dict[str, RecordWindows]:
    """{"train", "validation"} -> RecordWindows of the prepared dataset at ``path``."""
    import tensorflow_datasets as tfds

    tfds_dir = as_path(path) / meta["tfds_dir"]
    try:
        sources = tfds.builder_from_directory(str(tfds_dir)).as_data_source()
    except Exception as e:  # noqa: BLE001 - a missing or damaged TFDS directory
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(f"cannot read the TFDS data of {path} ({first}); prepare the dataset again") from None
    missing = [s for s in SPLITS if s not in sources]
    if missing:
        raise DataError(f"the prepared dataset {path} has no '{missing[0]}' split; prepare the dataset again")
    return {s: RecordWindows(sources[s], meta["seq_len"], transform) for s in SPLITS}


def check_compatible(cfg: DataConfig, meta: dict[str, Any]) -> None:
    """One-line DataError when the config asks for other windows or another tokenizer than the dataset's."""
    where = f"the prepared dataset {cfg.path}"
    if cfg.seq_len != meta["seq_len"]:
        raise DataError(f"data.seq_len={cfg.seq_len} does not match the seq_len={meta['seq_len']} of "
                        f"{where}; set data.seq_len={meta['seq_len']} or prepare the data again with "
                        f"data.seq_len={cfg.seq_len}")
    if cfg.eos != meta.get("eos", False):
        raise DataError(f"data.eos={cfg.eos} does not match the windows of {where} (prepared with "
                        f"data.eos={meta.get('eos', False)}); set data.eos={meta.get('eos', False)} or "
                        f"prepare the data again")
    if cfg.tokenizer != meta["tokenizer"]:
        raise DataError(f"data.tokenizer={cfg.tokenizer} does not match the {meta['tokenizer']} tokenizer of "
                        f"{where}; set data.tokenizer={meta['tokenizer']}")
    if cfg.tokenizer == "bpe" and cfg.bpe_vocab_size != meta["vocab_size"]:
        raise DataError(f"data.bpe_vocab_size={cfg.bpe_vocab_size} does not match the vocabulary of "
                        f"{meta['vocab_size']} of {where}; set data.bpe_vocab_size={meta['vocab_size']}")


def make_prepared_data(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> DataBundle:
    """The DataBundle of ``data.source=prepared``: the same batches as ``make_data`` on the source the
    dataset was prepared from (same tokenizer, seq_len, seed and batch size)."""
    B, L = cfg.batch_size, cfg.seq_len
    meta = read_metadata(cfg.path)
    check_compatible(cfg, meta)
    tokenizer = load_tokenizer(as_path(cfg.path) / TOKENIZER)
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise DataError(f"{cfg.path}: {TOKENIZER} has {tokenizer.vocab_size} ids but {METADATA} says "
                        f"{meta['vocab_size']}; prepare the dataset again")
    windows = open_windows(cfg.path, meta, cfg.transform)
    train, val = windows["train"], windows["validation"]
    if len(train) < B:
        raise DataError(f"the prepared training split of {cfg.path} has {len(train)} windows of seq_len={L}, "
                        f"fewer than one batch of data.batch_size={B}; lower data.batch_size "
                        f"(or prepare more text)")
    if len(val) < process_count:
        raise DataError(too_little_val(meta["val_tokens"], len(val), L, process_count))
    info = {
        "source": "prepared",
        "path": str(cfg.path),
        "prepared_from": meta["source"],
        "transform": cfg.transform,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "train_documents": meta["train_documents"],
        "val_documents": meta["val_documents"],
        "val_names": meta["val_names"],
        "train_tokens": meta["train_tokens"],
        "val_tokens": meta["val_tokens"],
        "train_windows": len(train),
        "val_windows": len(val),
        "steps_per_epoch": len(train) // B,
        "unique_train_tokens": len(train) * L,
        "val_bytes_per_token": meta["val_bytes_per_token"],
        "entropy_floor_bits_per_byte": meta.get("entropy_floor_bits_per_byte"),
    }
    return DataBundle(tokenizer=tokenizer, info=info, val_bytes_per_token=float(meta["val_bytes_per_token"]),
                      seq_len=L, global_batch_size=B, local_batch_size=B // process_count,
                      process_index=process_index, process_count=process_count, seed=cfg.seed,
                      train_windows=train, val_windows=val, num_workers=cfg.num_workers)
