"""Streaming SHA-256: the one hashing loop behind checksums, bundles, extraction and uploads.

Bounded memory whatever the size: bytes pass through in chunks and only the running digest
and the byte count are kept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

CHUNK = 1 << 20  # 1 MiB: large enough to reach OpenSSL speed, small enough for flat RSS


class Digest:
    """A running SHA-256 and the number of bytes it has seen."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class HashingReader:
    """Wraps a binary stream; every byte read through it is hashed (for tarfile's writer)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.digest = Digest()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        return data


def sha256_stream(stream: IO[bytes]) -> tuple[str, int]:
    """(hex digest, size) of everything left in `stream`."""
    digest = Digest()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := stream.readinto(view):  # type: ignore[attr-defined]
        digest.update(view[:n])
    return digest.hexdigest(), digest.size


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) of a file, in bounded memory whatever its size."""
    with open(path, "rb", buffering=0) as fh:
        return sha256_stream(fh)
