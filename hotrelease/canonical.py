"""Canonical JSON: the exact bytes that get signed.

Sorted keys, no insignificant white space, UTF-8, integers only (floats have more than one
spelling). Signer and verifier both sign/verify these bytes, never the file as written.
"""

from __future__ import annotations

import json
from typing import Any


def _reject_floats(value: Any, where: str = "$") -> None:
    if isinstance(value, float):
        raise ValueError(f"{where}: floats are not allowed in signed documents")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings")
            _reject_floats(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _reject_floats(item, f"{where}[{i}]")


def canonical_bytes(value: Any) -> bytes:
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def pretty_bytes(value: Any) -> bytes:
    """Human-friendly form for files on disk (signatures never cover this form)."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
