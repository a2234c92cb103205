"""Sampler inputs: a prompt (fixed prefix, masked rest) or an infilling template.

Template syntax: literal text with masked spans written ``[MASK:n]`` (n >= 1 masked tokens) or
``[MASK]`` (one masked token). Everything else is fixed text, encoded with the run's tokenizer
piece by piece (with the byte tokenizer a token is a UTF-8 byte, so ``[MASK:12]`` is 12 bytes).
The template fixes the sequence length. Example: ``"To be, or [MASK:12] to be"``.
There is no escape: a template cannot contain the literal text ``[MASK]`` or ``[MASK:n]``.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from jaxorder.config import ConfigError

MASK_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")


def parse_template(template: str, tokenizer: Any) -> np.ndarray:
    """Token ids [L] of ``template`` with ``tokenizer.mask_id`` at every masked position."""
    pieces, pos, spans = [], 0, 0
    for m in MASK_SPAN.finditer(template):
        if m.start() > pos:
            pieces.append(np.asarray(tokenizer.encode(template[pos:m.start()]), np.int32))
        n = int(m.group(1)) if m.group(1) is not None else 1
        if n < 1:
            raise ConfigError(f"template span '{m.group(0)}' must mask at least one token ([MASK:n], n >= 1)")
        pieces.append(np.full(n, tokenizer.mask_id, np.int32))
        pos, spans = m.end(), spans + 1
    if pos < len(template):
        pieces.append(np.asarray(tokenizer.encode(template[pos:]), np.int32))
    if not spans:
        raise ConfigError("the template has no masked span; mark the tokens to fill with [MASK:n] (n tokens) "
                          "or [MASK] (one), e.g. 'To be, or [MASK:12] to be'")
    if "[MASK" in MASK_SPAN.sub("", template):
        raise ConfigError("malformed mask span in the template; write [MASK:n] with a "
                          "number n >= 1, or [MASK]")
    return np.concatenate(pieces)


def prompt_tokens(prompt: str, tokenizer: Any, length: int, at_end: bool = False) -> np.ndarray:
    """Token ids [length]: the prompt's tokens, then MASK up to ``length`` (``at_end``: MASK first,
    the prompt as the end of the text, for runs generating right to left)."""
    ids = np.asarray(tokenizer.encode(prompt), np.int32) if prompt else np.zeros(0, np.int32)
    if len(ids) >= length:
        raise ConfigError(f"the prompt is {len(ids)} tokens, leaving nothing to generate in --length "
                          f"{length}; use a longer --length")
    masks = np.full(length - len(ids), tokenizer.mask_id, np.int32)
    return np.concatenate([masks, ids] if at_end else [ids, masks])


def build_inputs(tokenizer: Any, length: int | None, default_length: int, max_len: int,
                 prompt: str | None = None, template: str | None = None,
                 prompt_at_end: bool = False, max_new_tokens: int | None = None) -> np.ndarray:
    """The input row [L] for a prompt, a template or unconditional sampling (all MASK). The length is
    ``length``, or the prompt's tokens + ``max_new_tokens``, or ``default_length``."""
    if prompt is not None and template is not None:
        raise ConfigError("give either --prompt or --template, not both")
    if max_new_tokens is not None:
        if length is not None or template is not None:
            raise ConfigError("--max-new-tokens sets the length; give it without --length and --template")
        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        length = (len(tokenizer.encode(prompt)) if prompt else 0) + max_new_tokens
    if template is not None:
        if length is not None:
            raise ConfigError("--length does not apply to --template: the template fixes the length")
        ids = parse_template(template, tokenizer)
    else:
        length = default_length if length is None else length
        if length < 1:
            raise ConfigError(f"--length must be >= 1, got {length}")
        ids = prompt_tokens(prompt or "", tokenizer, length, prompt_at_end)
    if len(ids) > max_len:
        raise ConfigError(f"the sequence is {len(ids)} tokens, more than the model's max_len={max_len}")
    return ids
