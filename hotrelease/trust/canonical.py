"""Canonical JSON: the exact bytes that get signed, and the one strict reader of untrusted JSON.

Sorted keys, no insignificant white space, UTF-8, integers only (floats have more than one
spelling). Signer and verifier both sign/verify these bytes, never the file as written.

`strict_loads` reads every JSON document that comes from outside (manifests, signature
envelopes, labels, approvals, the agent's request bodies). It refuses what a signature cannot
vouch for unambiguously: duplicate keys (last-wins and first-wins readers would see different
documents under one signature), nesting deeper than `MAX_JSON_DEPTH`, NaN/Infinity, bytes that
are not UTF-8 and strings with lone surrogates. Every refusal is one `JSONInputError` (a
`ValueError`), never a `RecursionError`.
"""

from __future__ import annotations

import json
from typing import Any

# Deeper than anything hotrelease writes (a manifest is 3 levels, an activate request with its
# signed approval 5) and far below Python's recursion limit, so every walk over a document
# that passed (canonical form, history records, responses) is safe.
MAX_JSON_DEPTH = 32


class JSONInputError(ValueError):
    """Untrusted JSON that `strict_loads` refuses; the message says why, in a few words."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JSONInputError(f"duplicate key {clip(key)!r}")
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)


def clip(text: str, limit: int = 64) -> str:
    """A hostile string as quoted in a message or a record: at most `limit` characters and a
    marker."""
    return text if len(text) <= limit else text[:limit] + "..."


def _walk(value: Any, max_depth: int, *, floats: bool) -> None:
    """Iterative (no recursion at any depth): depth, string keys, valid Unicode, floats."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "$")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                raise JSONInputError(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise JSONInputError(f"{where}: keys must be strings")
                    _check_text(key, where)
                    stack.append((child, depth + 1, f"{where}.{clip(key, 32)}"))
            else:
                stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float) and not floats:
            raise JSONInputError(f"{where}: floats are not allowed in signed documents")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONInputError(f"{where}: string with a lone surrogate (not valid Unicode)") \
            from None


def strict_loads(data: bytes | bytearray | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON strictly (see the module doc); raises `JSONInputError`."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise JSONInputError("not UTF-8") from None
    else:
        text = data
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise JSONInputError(f"nested deeper than {max_depth} levels") from None
    except JSONInputError:
        raise
    except ValueError as exc:  # JSONDecodeError, an integer of more than 4300 digits
        raise JSONInputError(f"not valid JSON ({clip(str(exc), 120)})") from None
    _walk(value, max_depth, floats=True)
    return value


def canonical_bytes(value: Any) -> bytes:
    """The signed form; a value without one (floats, non-string keys, lone surrogates,
    nesting deeper than MAX_JSON_DEPTH) raises `JSONInputError` (a ValueError)."""
    _walk(value, MAX_JSON_DEPTH, floats=False)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def pretty_bytes(value: Any) -> bytes:
    """Human-friendly form for files on disk (signatures never cover this form)."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
