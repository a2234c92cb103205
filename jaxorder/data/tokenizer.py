"""Tokenizers. The byte tokenizer (the default) needs nothing: ids 0..255 are UTF-8 bytes,
followed by the special ids PAD, MASK (masked diffusion), BOS and EOS. ``data.tokenizer=bpe`` is
a byte-level BPE learned from the training documents (``jaxorder.data.bpe``) with the same
interface and the specials as its last four ids."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from etils import epath

from jaxorder.config import DataConfig
from jaxorder.data.bpe import BPETokenizer, bpe_for_documents, is_bpe_json
from jaxorder.data.errors import DataError


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then the specials."""

    pad_id: int = 256
    mask_id: int = 257
    bos_id: int = 258
    eos_id: int = 259
    vocab_size: int = 260
    name: str = "byte"

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of ``text`` as an int32 array (no specials added)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Any) -> str:
        """Text of the byte ids in ``ids`` (1-D); special ids are skipped, bad UTF-8 becomes U+FFFD."""
        arr = np.atleast_1d(np.asarray(ids))
        if arr.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
        keep = arr[(arr >= 0) & (arr < 256)]
        return keep.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def num_bytes(self, ids: Any) -> int:
        """How many UTF-8 bytes ``ids`` stand for (specials count 0)."""
        arr = np.asarray(ids)
        return int(np.count_nonzero((arr >= 0) & (arr < 256)))


TOKENIZERS = ("byte", "bpe")
BYTE_TOKENIZER_JSON = {"type": "jaxorder-byte", "vocab_size": 260}


def make_tokenizer(cfg: DataConfig, train_texts: Sequence[str] | None = None, use_cache: bool = True):
    """The tokenizer of ``cfg``: the byte tokenizer, or (``data.tokenizer=bpe``) a byte-level BPE of
    ``data.bpe_vocab_size`` ids learned from ``train_texts`` (the training documents' texts),
    cached by a hash of the texts and size (see ``jaxorder.data.bpe``)."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "bpe":
        if train_texts is None:
            raise DataError("data.tokenizer=bpe is learned from the training documents: build it with "
                            "make_data or `jaxorder data prepare` (or use data.tokenizer=byte)")
        return bpe_for_documents(train_texts, cfg.bpe_vocab_size, use_cache=use_cache)
    raise DataError(f"data.tokenizer='{cfg.tokenizer}' is not one of: {', '.join(TOKENIZERS)}; "
                    f"use data.tokenizer=byte or data.tokenizer=bpe")


def save_tokenizer(tokenizer: Any, path: str | os.PathLike) -> None:
    """Writes ``tokenizer`` as JSON: the HF tokenizer.json of a BPE, a small descriptor for bytes."""
    if isinstance(tokenizer, ByteTokenizer):
        epath.Path(path).write_text(json.dumps(BYTE_TOKENIZER_JSON) + "\n")
    else:
        tokenizer.save(path)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved by ``save_tokenizer`` (JSON only; nothing executable is loaded)."""
    try:
        text = epath.Path(path).read_text()
    except OSError as e:
        raise DataError(f"cannot read the tokenizer {path} ({e.strerror or e}); "
                        f"prepare the data again") from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise DataError(f"{path} is not JSON; prepare the data again") from None
    if obj == BYTE_TOKENIZER_JSON:
        return ByteTokenizer()
    if not is_bpe_json(text):
        raise DataError(f"{path} is neither a byte nor a BPE tokenizer; prepare the data again")
    return BPETokenizer.from_json(text)
