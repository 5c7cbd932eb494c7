"""A JSON object read up to the damage: what a truncated or corrupted annotation file
still holds.

An annotation file cut short (a full disk, an interrupted copy) loses only its tail;
:func:`salvage_json` keeps every complete top-level entry, and of a damaged top-level
list (COCO's ``images`` or ``annotations``) every complete item before the damage.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["salvage_json"]


def salvage_json(text: str) -> tuple[dict[str, Any], str | None]:
    """Parse a JSON object, keeping what precedes damage (a truncated file): the complete
    top-level entries and the complete items of a damaged top-level list. Returns the
    mapping and a description of the damage (``None`` when the text is valid)."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            return {}, "the file holds no JSON object"
        return data, None
    except json.JSONDecodeError as err:
        damage = f"broken JSON at line {err.lineno}, column {err.colno} ({err.msg})"
    dec, out, pos = json.JSONDecoder(), {}, _skip(text, 0, "{")
    while pos is not None:
        try:
            key, pos = dec.raw_decode(text, pos)
            pos = _skip(text, pos, ":")
            if pos is None:
                break
            if text[pos] == "[":
                out[key], pos = _salvage_list(dec, text, _ws(text, pos + 1))
            else:
                out[key], pos = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, IndexError):
            break
        pos = _skip(text, pos, ",") if pos is not None else None
    return out, damage


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
