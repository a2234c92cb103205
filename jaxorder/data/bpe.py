"""Byte-level BPE trained locally with HF ``tokenizers`` (``data.tokenizer=bpe``).

Vocabulary (``data.bpe_vocab_size = V`` ids in all): the 256 byte symbols, then the learned
merges, then the four specials as the LAST four ids, ``V-4 .. V-1`` = PAD, MASK, BOS, EOS (the
project convention: ``jaxorder.objectives.common.special_ids`` derives them from
``model.vocab_size``, as for the byte tokenizer's 256..259 of 260).

The model is GPT-2 style: text is UTF-8 encoded, split by the byte-level regex and merged; no
normalization and no prefix space, so ``decode(encode(text)) == text`` for every string.
Special-token text such as ``"<|eos|>"`` in a document is encoded as ordinary bytes, never as the
special id. ``num_bytes(ids)`` counts the UTF-8 bytes the ids decode to (specials 0), so
bits/byte stays the unit whatever the tokenizer.

Training is deterministic (same documents and size -> the same JSON; seconds on the embedded
corpus). ``bpe_for_documents`` caches the trained tokenizer as
JSON under ``$JAXORDER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/jaxorder`` or ``~/.cache/jaxorder``)
keyed by a hash of the training documents and the vocabulary size, so every ``make_data`` of
the same config (training, eval, reports) gets the same tokenizer even if a later ``tokenizers``
release trained differently. The saved form is the HF ``tokenizer.json`` (data, never pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from etils import epath

from jaxorder.data.errors import DataError

SPECIALS = ("<|pad|>", "<|mask|>", "<|bos|>", "<|eos|>")  # ids V-4, V-3, V-2, V-1
MIN_VOCAB = 256 + len(SPECIALS)
CACHE_FORMAT = "jaxorder-bpe-v1"


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: byte b -> one printable character (GPT-2's mapping, which the
    ``tokenizers`` ByteLevel pre-tokenizer uses): printable Latin-1 bytes map to themselves, the
    others to U+0100 upwards in byte order."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _new_hf_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class BPETokenizer:
    """Same interface as ``ByteTokenizer``: encode, decode, num_bytes, the special ids, vocab_size, name."""

    name = "bpe"

    def __init__(self, hf: Any):
        V = hf.get_vocab_size(with_added_tokens=True)
        ids = [hf.token_to_id(s) for s in SPECIALS]
        if V < MIN_VOCAB or ids != list(range(V - 4, V)):
            raise DataError(f"not a jaxorder BPE tokenizer: the last four ids must be {', '.join(SPECIALS)} "
                            f"(got ids {ids} of {V}); prepare the data again")
        hf.encode_special_tokens = True  # "<|eos|>" in a text is text, not the EOS id
        self._hf = hf
        self.vocab_size = V
        self.pad_id, self.mask_id, self.bos_id, self.eos_id = V - 4, V - 3, V - 2, V - 1
        pieces: list[bytes] = []
        for i in range(V - 4):
            token = hf.id_to_token(i)
            try:
                pieces.append(bytes(_UNICODE_TO_BYTE[c] for c in token))
            except (KeyError, TypeError):
                raise DataError(f"not a byte-level BPE tokenizer: token {i} ({token!r}) is not made of "
                                f"byte-level symbols; prepare the data again") from None
        self._pieces = pieces + [b""] * 4
        self._lengths = np.array([len(p) for p in self._pieces], dtype=np.int64)

    # -- encoding
    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int32 array (no specials added)."""
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``encode`` of each text (parallel in ``tokenizers``)."""
        encs = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids: Any) -> str:
        """Text of ``ids`` (1-D); specials and out-of-range ids are skipped, bad UTF-8 becomes U+FFFD."""
        arr = np.atleast_1d(np.asarray(ids))
        if arr.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
        pieces = self._pieces
        data = b"".join(pieces[i] for i in arr.tolist() if 0 <= i < self.pad_id)
        return data.decode("utf-8", errors="replace")

    def num_bytes(self, ids: Any) -> int:
        """How many UTF-8 bytes ``ids`` stand for (specials and out-of-range ids count 0)."""
        arr = np.asarray(ids).astype(np.int64).ravel()
        ok = (arr >= 0) & (arr < self.vocab_size)
        return int(self._lengths[arr[ok]].sum())

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id]

    # -- saving
    def to_json(self) -> str:
        return self._hf.to_str()

    def save(self, path: str | os.PathLike) -> None:
        if "://" in str(path):  # an object store: an object appears whole when its write completes
            epath.Path(path).write_text(self.to_json())
        else:
            _atomic_write(Path(path), self.to_json())

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer

        try:
            hf = Tokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise DataError(f"not a valid tokenizer JSON "
                            f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                            f"prepare the data again") from None
        return cls(hf)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        try:
            text = epath.Path(path).read_text()
        except OSError as e:
            raise DataError(f"cannot read the tokenizer {path} ({e.strerror or e}); "
                            f"prepare the data again") from None
        return cls.from_json(text)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Trains a byte-level BPE of ``vocab_size`` ids (incl. the 4 specials) on ``texts``."""
    from tokenizers import pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise DataError(f"data.bpe_vocab_size must be >= {MIN_VOCAB} (256 bytes + 4 "
                        f"specials), got {vocab_size}")
    texts = [t for t in texts if t]
    if not texts:
        raise DataError("no training text to learn the BPE vocabulary from; add text or "
                        "use data.tokenizer=byte")
    hf = _new_hf_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), min_frequency=0, show_progress=False,
                                  special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer, length=len(texts))
    learned = hf.get_vocab_size(with_added_tokens=True)
    if learned != vocab_size - len(SPECIALS):
        raise DataError(f"the training text supports only {learned + len(SPECIALS)} BPE ids (no more pairs "
                        f"to merge), fewer than data.bpe_vocab_size={vocab_size}; set "
                        f"data.bpe_vocab_size={learned + len(SPECIALS)} or lower (and model.vocab_size "
                        f"to match), or add text")
    hf.add_special_tokens(list(SPECIALS))
    return BPETokenizer(hf)


# ----------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    env = os.environ.get("JAXORDER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxorder"


def documents_key(texts: Sequence[str], vocab_size: int) -> str:
    """sha256 of the training texts (in order) and the vocabulary size."""
    h = hashlib.sha256(f"{CACHE_FORMAT}\n{vocab_size}\n{len(texts)}\n".encode())
    for t in texts:
        b = t.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def bpe_for_documents(texts: Sequence[str], vocab_size: int, use_cache: bool = True) -> BPETokenizer:
    """The BPE tokenizer of these training texts: from the cache if present, else trained (and cached)."""
    texts = list(texts)
    path = cache_dir() / "bpe" / f"{documents_key(texts, vocab_size)[:40]}.json"
    if use_cache and path.is_file():
        try:
            tok = BPETokenizer.load(path)
            if tok.vocab_size == vocab_size:
                return tok
        except DataError:
            pass  # a damaged cache entry: retrain and overwrite it
    tok = train_bpe(texts, vocab_size)
    if use_cache:
        try:
            tok.save(path)
        except OSError:
            pass  # a read-only cache only costs the retraining
    return tok


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_bpe_json(text: str) -> bool:
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and obj["model"].get("type") == "BPE"
