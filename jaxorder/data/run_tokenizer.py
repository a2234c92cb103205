"""A run's tokenizer is the `tokenizer.json` saved in its directory at training time.

A BPE tokenizer is learned from the data, so rebuilding it from the config's data path after the
data changed gives other ids for the same text: the model's numbers would be wrong without any
error. Eval, sample and the judge therefore decode with the saved file, and refuse data whose
tokenizer no longer matches it.
"""
from __future__ import annotations

import json
from typing import Any

from etils import epath

from jaxorder.config import Config, ConfigError
from jaxorder.data.pipeline import make_data
from jaxorder.data.tokenizer import BYTE_TOKENIZER_JSON, ByteTokenizer, load_tokenizer

TOKENIZER_FILE = "tokenizer.json"


def tokenizer_json(tokenizer: Any) -> dict:
    """The parsed JSON form `save_tokenizer` writes, for comparing two tokenizers."""
    if isinstance(tokenizer, ByteTokenizer):
        return dict(BYTE_TOKENIZER_JSON)
    return json.loads(tokenizer.to_json())


def saved_tokenizer(run_dir: Any, cfg: Config) -> Any:
    """The run's saved tokenizer; runs from before tokenizer.json existed rebuild it from the config."""
    path = epath.Path(run_dir) / TOKENIZER_FILE
    if not path.exists():
        return ByteTokenizer() if cfg.data.tokenizer == "byte" else make_data(cfg.data).tokenizer
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"{path} has {tokenizer.vocab_size} ids but the run's model.vocab_size is "
                          f"{cfg.model.vocab_size}: it is not the tokenizer the run was trained with; "
                          f"restore it or train a new run")
    return tokenizer


def data_label(cfg: Config) -> str:
    """How the error names the data a tokenizer was built from."""
    return f"data.source={cfg.data.source}" + (f" data.path={cfg.data.path}" if cfg.data.path else "")


def require_same_tokenizer(run_dir: Any, tokenizer: Any, cfg: Config) -> None:
    """ConfigError unless `tokenizer` (built from `cfg`'s data) equals the one saved in `run_dir`."""
    path = epath.Path(run_dir) / TOKENIZER_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    if saved != tokenizer_json(tokenizer):
        raise ConfigError(f"the tokenizer built from {data_label(cfg)} differs from the one {run_dir} was "
                          f"trained with ({path}); restore the run's data, or train a new run (--run-dir)")
