"""coreutils-format SHA256SUMS files (the digests come from `trust.digest`)."""

from __future__ import annotations

from pathlib import Path


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
