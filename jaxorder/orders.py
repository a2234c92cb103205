"""Explicit generation orders: `perm:5,1,2,3,4,0,6-` and `perm@FILE`.

A perm spec lists the positions in the order they are generated: single indices, inclusive
ranges `a-b` (descending when a > b, so `perm:7-0` is r2l on 8 tokens) and, last only, an open
range `k-`: every index >= k not listed before it, in reading order. A spec covers the whole
window: one that lists fewer indices than the window has is an error unless it ends with `k-`.
`perm@FILE` holds one spec per non-blank line (with or without the `perm:` prefix): one line is
the order of every window (or sample row), otherwise line w is the order of window w.

`l2r` and `r2l` name the two reading orders wherever an order spec is taken. The specs are read by
`eval --orders` and `score --order` (evaluation), the any-order samplers' `order` option (sampling)
and latent_order's `objective.candidate_orders` (objectives), so this module sits at the bottom.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxorder.errors import ConfigError

PREFIX = "perm:"
NAMED = ("l2r", "r2l")  # orders named without indices; they fit every length
FILE_PREFIX = "perm@"
# An index, a range a-b, or an open range k-: what may follow `perm:` in a comma list.
ITEM = re.compile(r"^(\d+)(-(\d*))?$")
SYNTAX = "indices, ranges a-b and a last k- (all indices >= k not yet listed)"

Item = tuple[int, int | None]  # (a, a) an index, (a, b) a range, (k, None) the open range k-


@dataclass(frozen=True)
class Perm:
    """One parsed spec, before it meets a window length."""

    items: tuple[Item, ...]

    @property
    def text(self) -> str:
        """Canonical text: parse(perm.text) == perm."""
        parts = [str(a) if b == a else f"{a}-" if b is None else f"{a}-{b}" for a, b in self.items]
        return PREFIX + ",".join(parts)


def looks_like_item(token: str) -> bool:
    """Whether a comma-separated token continues a perm spec (starts with a digit)."""
    return token[:1].isdigit()


def parse_items(tokens: list[str], where: str) -> Perm:
    """The spec of comma-separated tokens ('5', '1-4', '6-'); ConfigError naming a bad token."""
    if not tokens or tokens == [""]:
        raise ConfigError(f"{where} is empty; list the positions in generation order, e.g. perm:1,0,2-")
    items: list[Item] = []
    for i, token in enumerate(tokens):
        match = ITEM.match(token.strip())
        if not match:
            raise ConfigError(f"{where}: bad token '{token}'; use {SYNTAX}")
        a, dash, b = int(match.group(1)), match.group(2), match.group(3)
        if dash and not b and i != len(tokens) - 1:
            raise ConfigError(f"{where}: the open range '{token}' must come last")
        items.append((a, a) if not dash else (a, int(b) if b else None))
    return Perm(tuple(items))


def parse(text: str) -> Perm:
    """'perm:5,1-4,0,6-' -> Perm."""
    if not text.startswith(PREFIX):
        raise ConfigError(f"'{text}' is not a perm spec; write perm:{SYNTAX.split(' and')[0]}")
    return parse_items(text[len(PREFIX):].split(","), f"order '{text}'")


def resolve(perm: Perm, length: int, where: str = "") -> np.ndarray:
    """The order [length] (position generated at each step); ConfigError if it is no permutation."""
    name = where or perm.text
    listed: list[int] = []
    open_from = None
    for a, b in perm.items:
        if b is None:
            open_from = a
        else:
            listed += list(range(a, b + 1)) if a <= b else list(range(a, b - 1, -1))
    too_big = sorted({i for i in listed if i >= length}
                     | ({open_from} if open_from is not None and open_from > length else set()))
    if too_big:
        raise ConfigError(f"order {name}: index {too_big[0]} is out of range for a window of {length} "
                          f"tokens (indices 0..{length - 1})")
    seen: set[int] = set()
    dupes = []
    for i in listed:
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        raise ConfigError(f"order {name}: index {dupes[0]} appears twice; each position once")
    if open_from is not None:
        listed += [i for i in range(open_from, length) if i not in seen]
    missing = sorted(set(range(length)) - set(listed))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"order {name}: index {missing[0]} is missing{more} for a window of {length} "
                          f"tokens; list it or end with an open range k-")
    return np.asarray(listed, dtype=np.int32)


def canonical(order: np.ndarray) -> str:
    """The shortest-ish text of a resolved order: runs of +-1 steps become ranges a-b."""
    order = [int(i) for i in order]
    parts, start = [], 0
    while start < len(order):
        end = start
        step = order[start + 1] - order[start] if start + 1 < len(order) else 0
        if abs(step) == 1:
            while end + 1 < len(order) and order[end + 1] - order[end] == step:
                end += 1
        parts.append(str(order[start]) if end == start else f"{order[start]}-{order[end]}")
        start = end + 1
    return PREFIX + ",".join(parts)


def read_file(path: str) -> list[Perm]:
    """The specs of a perm@FILE, one per non-blank line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"order file perm@{path} cannot be read ({e}); give a text file with one "
                          f"permutation per line") from None
    perms = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line:
            body = line[len(PREFIX):] if line.startswith(PREFIX) else line
            perms.append(parse_items(body.split(","), f"perm@{path} line {number}"))
    if not perms:
        raise ConfigError(f"order file perm@{path} is empty; write one permutation per line, e.g. 1,0,2-")
    return perms


def window_orders(perms: list[Perm], windows: int, length: int, label: str,
                  unit: str = "window") -> np.ndarray:
    """Orders [windows, length]: one spec for every window, or one per window (`unit`: the word for a
    window in messages, e.g. a sample row)."""
    if len(perms) not in (1, windows):
        raise ConfigError(f"{label} has {len(perms)} permutations for {windows} {unit}s; give one line "
                          f"(the same order everywhere) or exactly one per {unit}")
    rows = [resolve(p, length, f"{label} line {i + 1}" if len(perms) > 1 else label)
            for i, p in enumerate(perms)]
    return np.stack(rows if len(rows) == windows else rows * windows)


def split_list(text: str) -> list[str]:
    """'l2r,perm:5,1-4,0,6-,r2l' -> ['l2r', 'perm:5,1-4,0,6-', 'r2l']: the digit tokens right after a
    `perm:` belong to it; blank items are dropped (and end a perm)."""
    items: list[str] = []
    in_perm = False
    for part in (p.strip() for p in text.split(",")):
        if in_perm and looks_like_item(part):
            items[-1] += "," + part
        elif part:
            items.append(part)
        in_perm = bool(part) and items[-1].startswith(PREFIX)
    return items


def named_or_perm(text: str, length: int, where: str) -> np.ndarray:
    """The order [length] of `l2r`, `r2l` or one perm spec; ConfigError otherwise (`where` names the
    setting in the message)."""
    if text == "l2r":
        return np.arange(length, dtype=np.int32)
    if text == "r2l":
        return np.arange(length, dtype=np.int32)[::-1].copy()
    if not text.startswith(PREFIX):
        raise ConfigError(f"{where}: unknown order '{text}'; use l2r, r2l or perm:INDICES (e.g. perm:1,0,2-)")
    return resolve(parse(text), length, f"'{text}' in {where}")


def row_orders(text: str, rows: int, length: int, where: str) -> np.ndarray:
    """Orders [rows, length] of `l2r`, `r2l`, a perm spec (every row) or perm@FILE (one line for every
    row, or one per row)."""
    if text.startswith(FILE_PREFIX):
        return window_orders(read_file(text[len(FILE_PREFIX):]), rows, length, f"{where} {text}", "row")
    return np.tile(named_or_perm(text, length, where), (rows, 1))
