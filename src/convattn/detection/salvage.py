"""A JSON object read up to the damage: what a truncated or corrupted annotation file
still holds.

An annotation file cut short (a full disk, an interrupted copy) loses only its tail;
:func:`salvage_json` keeps every complete top-level entry, and of a damaged top-level
list (COCO's ``images`` or ``annotations``) every complete item before the damage.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

__all__ = ["Salvaged", "salvage_json"]


class Salvaged(NamedTuple):
    """What :func:`salvage_json` read: the mapping, a description of the damage (``None``
    when the text is valid) and the key of the entry the damage cut (``None`` when it
    fell between entries or the text is valid)."""

    data: dict[str, Any]
    damage: str | None
    cut: str | None


def salvage_json(text: str) -> Salvaged:
    """Parse a JSON object, keeping what precedes damage (a truncated file): the complete
    top-level entries and the complete items of a damaged top-level list."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            return Salvaged({}, "the file holds no JSON object", None)
        return Salvaged(data, None, None)
    except json.JSONDecodeError as err:
        damage = f"broken JSON at line {err.lineno}, column {err.colno} ({err.msg})"
    dec, out, pos = json.JSONDecoder(), {}, _skip(text, 0, "{")
    while pos is not None:
        key = None
        try:
            key, pos = dec.raw_decode(text, pos)
            pos = _skip(text, pos, ":")
            if pos is not None and text[pos] == "[":
                out[key], pos = _salvage_list(dec, text, _ws(text, pos + 1))
            elif pos is not None:
                out[key], pos = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, IndexError):
            pos = None
        if pos is None:  # the damage: in the entry of ``key`` once that was read
            return Salvaged(out, damage, key if isinstance(key, str) else None)
        pos = _skip(text, pos, ",")
    return Salvaged(out, damage, None)


def _ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _skip(text: str, pos: int, char: str) -> int | None:
    """The position after ``char`` and the whitespace around it, or None."""
    pos = _ws(text, pos)
    return _ws(text, pos + 1) if pos < len(text) and text[pos] == char else None


def _salvage_list(dec: json.JSONDecoder, text: str, pos: int) -> tuple[list, int | None]:
    """The complete items of a list starting at ``pos``; the position after it, or None
    when the list is damaged."""
    items: list[Any] = []
    while True:
        end = _skip(text, pos, "]")
        if end is not None:
            return items, end
        try:
            item, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return items, None
        items.append(item)
        nxt = _skip(text, pos, ",")
        if nxt is None:
            end = _skip(text, pos, "]")
            return items, end
        pos = nxt
