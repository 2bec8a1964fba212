"""Deterministic plugin bundles (`.tar.gz`) and streaming inspection of them.

Same input files + same SOURCE_DATE_EPOCH = same bytes, wherever the build ran: entries are
sorted, mtimes clamped to one value, owners and modes normalised, and the gzip header carries
neither a timestamp nor a file name. Only regular files and directories are ever written.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hotrelease.build.checksum import CHUNK
from hotrelease.errors import BuildError, UnsafeArchiveError
from hotrelease.trust.manifest import FileEntry, check_member_path

GZIP_LEVEL = 6  # tarfile's default is 9: ~3x slower for ~0.1% smaller output


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix relative path, absolute path) for every entry below root, sorted bytewise."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            entries.append((full.relative_to(root).as_posix(), full))
    entries.sort(key=lambda e: e[0].encode())
    return iter(entries)


def create_bundle(source_dir: Path, target: Path, mtime: int) -> list[FileEntry]:
    """Pack `source_dir` into `target`; return the file entries (path, sha256, size)."""
    files: list[FileEntry] = []
    with open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL,
                          mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in _walk(source_dir):
            st = full.lstat()
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(full, "rb") as fh:
                    hashing = _HashingReader(fh)
                    tar.addfile(info, hashing)
                files.append(FileEntry(check_member_path(rel), hashing.hexdigest(), st.st_size))
            else:
                raise BuildError(f"build output {rel!r} is not a regular file or directory "
                                 "(links and special files are not allowed in bundles)")
    return files


class _HashingReader:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def scan_bundle(path: Path) -> list[FileEntry]:
    """Stream through a bundle and return its regular files' entries, refusing anything
    that is not a plain relative file or directory. Reads in bounded memory."""
    files: list[FileEntry] = []
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                try:
                    check_member_path(name.rstrip("/") if member.isdir() else name)
                except Exception:
                    raise UnsafeArchiveError(f"bundle member {name!r} has an unsafe path") \
                        from None
                if member.isdir():
                    continue
                if not member.isreg():
                    raise UnsafeArchiveError(f"bundle member {name!r} is not a regular file "
                                             "(links and devices are refused)")
                stream = tar.extractfile(member)
                assert stream is not None
                digest = hashlib.sha256()
                size = 0
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                files.append(FileEntry(name, digest.hexdigest(), size))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise UnsafeArchiveError(f"{path}: not a readable .tar.gz bundle: {exc}") from None
    return files
