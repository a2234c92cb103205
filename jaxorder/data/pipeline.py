"""make_data: a source's documents -> tokenizer -> packed windows -> ``DataBundle`` (``bundle.py``);
``data.source=prepared`` reads a prepared dataset instead (``prepared.py``).

The tokenized training documents are concatenated into one stream with EOS between documents and
cut into non-overlapping windows of ``seq_len`` tokens (``documents.pack_documents``); likewise the
validation documents. With ``data.eos`` every window starts at a document start instead and ends in
EOS padding (``documents.document_windows``).

Transforms (``data.transform``, e.g. swap05) are applied to every window, training and
validation alike, right after packing; ``train_windows``/``val_windows`` hold transformed windows.
"""
from __future__ import annotations

from jaxorder.config import DataConfig
from jaxorder.data.bundle import DataBundle, too_little_val
from jaxorder.data.documents import document_texts, make_windows
from jaxorder.data.errors import DataError
from jaxorder.data.prepared import make_prepared_data
from jaxorder.data.sources import load_documents
from jaxorder.data.synthetic import apply_transform, markov_entropy_rate_bits
from jaxorder.data.tokenizer import make_tokenizer


def make_data(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> DataBundle:
    """Loads, tokenizes and packs the data of ``cfg``; raises DataError naming the fix."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    B, L = cfg.batch_size, cfg.seq_len
    if B % process_count:
        raise DataError(f"data.batch_size={B} is not divisible by the {process_count} processes; "
                        f"set data.batch_size to a multiple of {process_count}")
    if cfg.source == "prepared":
        return make_prepared_data(cfg, process_index, process_count)
    train_docs, val_docs = load_documents(cfg)
    tokenizer = make_tokenizer(cfg, document_texts(train_docs) if cfg.tokenizer != "byte" else None)
    train_windows, train_tokens, _ = make_windows(train_docs, tokenizer, L, cfg.eos)
    if cfg.max_train_tokens:  # a fixed unique-token budget, repeated for as many epochs as training takes
        train_windows = train_windows[:cfg.max_train_tokens // L]
        train_tokens = min(train_tokens, cfg.max_train_tokens)
    val_windows, val_tokens, val_bytes_per_token = make_windows(val_docs, tokenizer, L, cfg.eos)
    train_windows = apply_transform(cfg.transform, train_windows)
    val_windows = apply_transform(cfg.transform, val_windows)
    if len(train_windows) < B:
        raise DataError(f"the training text has {train_tokens} tokens = {len(train_windows)} windows "
                        f"of data.seq_len={L}, fewer than one batch of data.batch_size={B}; "
                        f"lower data.seq_len or data.batch_size (or add text)")
    if len(val_windows) < process_count:
        raise DataError(too_little_val(val_tokens, len(val_windows), L, process_count))
    info = {
        "source": cfg.source,
        "transform": cfg.transform,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "val_names": [d.name for d in val_docs],
        "eos": cfg.eos,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "train_windows": len(train_windows),
        "val_windows": len(val_windows),
        "steps_per_epoch": len(train_windows) // B,
        "unique_train_tokens": len(train_windows) * L,  # what one epoch visits (the tail is dropped)
        "val_bytes_per_token": val_bytes_per_token,
        "entropy_floor_bits_per_byte": markov_entropy_rate_bits(cfg) if cfg.source == "markov" else None,
    }
    return DataBundle(tokenizer=tokenizer, info=info, val_bytes_per_token=val_bytes_per_token,
                      seq_len=L, global_batch_size=B, local_batch_size=B // process_count,
                      process_index=process_index, process_count=process_count, seed=cfg.seed,
                      train_windows=train_windows, val_windows=val_windows)
