"""Streaming SHA-256 and coreutils-format SHA256SUMS files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # 1 MiB: large enough to reach OpenSSL speed, small enough for flat RSS


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = stream.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(view[:n])
        size += n
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) of a file, in bounded memory whatever its size."""
    with open(path, "rb", buffering=0) as fh:
        return sha256_stream(fh)


def write_sha256sums(directory: Path, digests: dict[str, str]) -> Path:
    """Add or update entries in `directory/SHA256SUMS` (coreutils format), keeping the
    entries of other files that still exist, so `sha256sum -c SHA256SUMS` passes there."""
    target = directory / "SHA256SUMS"
    merged = {name: digest for name, digest in
              (read_sha256sums(target).items() if target.exists() else ())
              if (directory / name).is_file()}
    merged.update(digests)
    tmp = directory / ".SHA256SUMS.tmp"
    tmp.write_text("".join(f"{merged[name]}  {name}\n" for name in sorted(merged)))
    tmp.replace(target)
    return target


def read_sha256sums(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        out[name.lstrip("*")] = digest
    return out
