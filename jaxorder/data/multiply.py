"""Data whose direction matters: lines ``a*b=c`` with c = a * b (``data.source=multiply``).

a and b are uniform random integers of exactly ``data.multiply_digits`` decimal digits (no leading
zeros), c their product written without leading zeros. Read left to right, c is a function of a and
b (a multiplication); read right to left, a model must produce c first (the distribution of
products) and then b and a given c (a factorization). So l2r faces an easy conditional and r2l a
hard one, although both model the same joint distribution.

With ``data.multiply_reverse=true`` every number is written least-significant digit first
(``123*45=5535`` becomes ``321*54=5355``): left to right, c's digits then come in the order in which
carries are produced (each digit depends on lower digits only, the schoolbook order), which makes
l2r easier still; right to left is still a factorization.

Lines are joined by '\\n' into ``MULTIPLY_DOCS`` documents (no trailing newline); about
``data.synthetic_tokens`` tokens in all. The (a, b) pairs are drawn without replacement, so no
pair occurs twice, and the document split (whole documents) keeps validation pairs disjoint from
training pairs. Deterministic from ``data.seed`` and the fields named here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxorder.config import MULTIPLY_MAX_DIGITS, DataConfig
from jaxorder.data.documents import Document
from jaxorder.data.errors import DataError

MULTIPLY_DOCS = 20
_TAG_MULTIPLY = 4  # seed-stream tag (synthetic.py uses 1..3)


def line_length(digits: int) -> int:
    """Characters of an average line incl. its '\\n': a, '*', b, '=', a product of 2d or 2d-1 digits."""
    return 2 * digits + 2 + 2 * digits + 1


def format_line(a: int, b: int, reverse: bool) -> str:
    """``a*b=c`` (c = a*b), every number's digits least-significant first when ``reverse``."""
    nums = [str(a), str(b), str(a * b)]
    if reverse:
        nums = [n[::-1] for n in nums]
    return f"{nums[0]}*{nums[1]}={nums[2]}"


def parse_line(line: str, reverse: bool) -> tuple[int, int, int] | None:
    """(a, b, c) of a well-formed line ``a*b=c`` (digits only, no leading zeros in the order written
    back), else None; ``reverse`` reads every number least-significant digit first."""
    left, eq, c = line.strip().partition("=")
    a, star, b = left.partition("*")
    if not (eq and star) or not all(s.isascii() and s.isdigit() for s in (a, b, c)):
        return None
    nums = [s[::-1] if reverse else s for s in (a, b, c)]
    if any(len(n) > 1 and n[0] == "0" for n in nums):
        return None
    return int(nums[0]), int(nums[1]), int(nums[2])


def is_correct_product(line: str, reverse: bool) -> bool:
    """True iff ``line`` parses (``parse_line``) and c == a * b."""
    parsed = parse_line(line, reverse)
    return parsed is not None and parsed[0] * parsed[1] == parsed[2]


def sample_pairs(n: int, digits: int, seed: int) -> np.ndarray:
    """int64 [n, 2] distinct (a, b) pairs of ``digits``-digit numbers, uniform without replacement."""
    lo, width = 10 ** (digits - 1), 9 * 10 ** (digits - 1)  # numbers lo .. lo + width - 1
    if n > width * width:
        raise DataError(f"{n} distinct products of {digits}-digit numbers requested but only "
                        f"{width * width} exist; lower data.synthetic_tokens or raise data.multiply_digits")
    rng = np.random.default_rng([int(seed) % 2**63, _TAG_MULTIPLY, digits])
    flat = rng.choice(width * width, size=n, replace=False)
    return np.stack([lo + flat // width, lo + flat % width], axis=1).astype(np.int64)


def multiply_documents(cfg: DataConfig) -> list[Document]:
    """About ``synthetic_tokens`` tokens of lines in ``MULTIPLY_DOCS`` documents of equal line counts."""
    d = int(cfg.multiply_digits)
    if not 1 <= d <= MULTIPLY_MAX_DIGITS:
        raise DataError(f"data.multiply_digits must be in [1, {MULTIPLY_MAX_DIGITS}], got {d}")
    per_doc = int(cfg.synthetic_tokens) // (line_length(d) * MULTIPLY_DOCS)
    if per_doc < 1:
        raise DataError(f"data.synthetic_tokens={cfg.synthetic_tokens} is too few for {MULTIPLY_DOCS} "
                        f"documents of one line; raise it to at least {line_length(d) * MULTIPLY_DOCS}")
    pairs = sample_pairs(per_doc * MULTIPLY_DOCS, d, cfg.seed).reshape(MULTIPLY_DOCS, per_doc, 2)
    width = len(str(MULTIPLY_DOCS - 1))
    return [Document(f"multiply-{i:0{width}d}",
                     "\n".join(format_line(int(a), int(b), cfg.multiply_reverse) for a, b in pairs[i]))
            for i in range(MULTIPLY_DOCS)]


def product_accuracy(texts: Sequence[str], reverse: bool) -> dict:
    """Correct-product fraction of sample texts: every complete line (one with a newline on both
    sides, or a whole sample without newlines) that contains '=' is a candidate; lines cut at a
    window's edges are not counted."""
    lines = []
    for t in texts:
        parts = t.split("\n")
        lines += parts if len(parts) == 1 else parts[1:-1]
    lines = [line for line in lines if "=" in line]
    correct = sum(is_correct_product(line, reverse) for line in lines)
    return {"products": len(lines), "correct_products": correct,
            "correct_product_fraction": correct / len(lines) if lines else 0.0}
