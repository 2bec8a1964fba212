"""Deterministic plugin bundles (`.tar.gz`). Reading one back is `trust.archive`'s job.

Same input files + same SOURCE_DATE_EPOCH = same bytes, wherever the build ran: entries are
sorted, mtimes clamped to one value, owners and modes normalised, and the gzip header carries
neither a timestamp nor a file name. Only regular files and directories are ever written.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from hotrelease.errors import BuildError
from hotrelease.trust.digest import HashingReader
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
                    hashing = HashingReader(fh)
                    tar.addfile(info, hashing)
                files.append(FileEntry(check_member_path(rel), hashing.digest.hexdigest(),
                                       st.st_size))
            else:
                raise BuildError(f"build output {rel!r} is not a regular file or directory "
                                 "(links and special files are not allowed in bundles)")
    return files
