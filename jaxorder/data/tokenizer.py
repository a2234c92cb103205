"""Tokenizers. The byte tokenizer (the default) needs nothing: ids 0..255 are UTF-8 bytes,
followed by the special ids PAD, MASK (masked diffusion), BOS and EOS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxorder.config import ConfigError, DataConfig


class DataError(ConfigError):
    """Bad or missing data (path, corpus package, too little text); the message names the fix."""


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


TOKENIZERS = ("byte",)


def make_tokenizer(cfg: DataConfig) -> ByteTokenizer:
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    raise DataError(f"data.tokenizer='{cfg.tokenizer}' is not available; use data.tokenizer=byte")
