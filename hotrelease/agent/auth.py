"""Bearer-token authentication for the agent API.

The agent config stores only `sha256(token)` (hex) with a name; the name is who the history
says acted. A presented token is hashed and compared with *every* configured hash with
`hmac.compare_digest` (no early exit), so timing reveals neither which token nearly matched
nor how many bytes of it. Every failure - no header, another scheme, an empty, wrong,
truncated or non-ASCII token - produces the same `Unauthorized`, with the same message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from hotrelease.errors import Unauthorized

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str  # hex digest of the UTF-8 token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "hrt_" + secrets.token_urlsafe(32)


def is_token_hash(value: str) -> bool:
    return bool(_HEX64.match(value))


def authenticate(header: str | None, tokens: list[TokenEntry]) -> str:
    """Return the token name for a valid `Authorization` header value, else raise."""
    presented = b""
    if header is not None and header[:7].lower() == "bearer ":
        candidate = header[7:].strip(" ")
        # HTTP headers arrive as latin-1 text; a real token is printable ASCII only.
        if candidate and candidate.isascii() and candidate.isprintable():
            presented = candidate.encode("ascii")
    digest = hashlib.sha256(presented).hexdigest().encode()
    match: str | None = None
    for entry in tokens:
        if hmac.compare_digest(digest, entry.sha256.encode()) and presented:
            match = entry.name
    if match is None:
        raise Unauthorized()
    return match
