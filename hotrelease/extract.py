"""Safe extraction of a plugin bundle (`.tar.gz`) into a fresh directory.

Two independent layers check every member before a single byte of it is written:

1. Python's own `tarfile.data_filter` (the `filter="data"` policy);
2. our own rules, which do not trust layer 1 (it has had bypass CVEs):
   - the name is relative and normalised (no absolute path, no `..`, `.`, empty part,
     backslash or NUL) and appears only once;
   - only regular files and directories: symlinks, hardlinks, devices, FIFOs, sparse files
     and anything else are refused, never skipped;
   - no setuid / setgid / sticky bits;
   - the real path of the member's parent directory (symlinks resolved) is inside the real
     path of the destination (a path comparison, not a string prefix: `dest-evil` is not
     inside `dest`).

Files are created with O_CREAT|O_EXCL|O_NOFOLLOW (never through an existing entry), hashed
while written, fsynced, and finally made read-only. The caller gets the (path, sha256, size)
of every file so it can compare what was written with what was signed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from hotrelease.errors import UnsafeArchiveError
from hotrelease.manifest import FileEntry

CHUNK = 1 << 20
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def is_within(root: str, path: str) -> bool:
    """True if `path` is `root` or below it. Both must already be real, absolute paths."""
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives / mix of absolute and relative
        return False


def check_member_name(name: str) -> str:
    """Return the normalised member name (without a trailing '/') or raise."""
    if not isinstance(name, str) or not name:
        raise UnsafeArchiveError("archive member with an empty name")
    if "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"archive member {name!r}: NUL or backslash in name")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"archive member {name!r}: absolute path")
    clean = name[:-1] if name.endswith("/") else name
    parts = clean.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeArchiveError(f"archive member {name!r}: '..', '.' or empty path part")
    return clean


def _check_member(member: tarfile.TarInfo, dest_real: str) -> str:
    name = check_member_name(member.name)
    if not (member.isreg() or member.isdir()) or member.issparse():
        kind = ("symlink" if member.issym() else "hardlink" if member.islnk() else
                "device" if member.ischr() or member.isblk() else
                "FIFO" if member.isfifo() else "special member")
        raise UnsafeArchiveError(f"archive member {name!r} is a {kind}: only regular files "
                                 "and directories are allowed")
    if member.mode & _SPECIAL_BITS:
        raise UnsafeArchiveError(f"archive member {name!r} has setuid/setgid/sticky bits")
    # Layer 1: the stdlib "data" filter (raises tarfile.FilterError subclasses).
    try:
        tarfile.data_filter(member, dest_real)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"archive member {name!r} refused: {exc}") from None
    # Layer 2: our own real-path check of where it would land.
    target = os.path.join(dest_real, name)
    parent_real = os.path.realpath(os.path.dirname(target))
    if not is_within(dest_real, parent_real):
        raise UnsafeArchiveError(f"archive member {name!r} would land outside the "
                                 "destination directory")
    return name


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dirs(dest_real: str, rel_dir: str, made: set[str]) -> None:
    """Create `rel_dir` (and parents) below dest, refusing to go through anything but a
    directory we created ourselves."""
    if not rel_dir:
        return
    current = dest_real
    for part in rel_dir.split("/"):
        current = os.path.join(current, part)
        if current in made:
            continue
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            raise UnsafeArchiveError(f"archive path {rel_dir!r} collides with an existing "
                                     "entry") from None
        made.add(current)


def safe_extract(bundle: Path, dest: Path, *, max_members: int = 100_000,
                 max_total_bytes: int | None = None,
                 on_file: Callable[[str], None] | None = None) -> list[FileEntry]:
    """Extract `bundle` into `dest`, which must exist and be empty. Raises
    `UnsafeArchiveError` on the first unsafe member (the caller deletes `dest`)."""
    dest_real = os.path.realpath(dest)
    if not os.path.isdir(dest_real) or os.listdir(dest_real):
        raise UnsafeArchiveError(f"{dest}: extraction target must be an empty directory")
    seen: set[str] = set()
    made_dirs: set[str] = set()
    files: list[FileEntry] = []
    total = 0
    try:
        with tarfile.open(bundle, mode="r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise UnsafeArchiveError(f"archive has more than {max_members} members")
                name = _check_member(member, dest_real)
                if name in seen:
                    raise UnsafeArchiveError(f"archive member {name!r} appears twice")
                seen.add(name)
                target = os.path.join(dest_real, name)
                if member.isdir():
                    if target in made_dirs:
                        continue  # implicit parent created earlier; explicit entry is fine
                    _ensure_dirs(dest_real, name, made_dirs)
                    continue
                _ensure_dirs(dest_real, os.path.dirname(name), made_dirs)
                total += member.size
                if max_total_bytes is not None and total > max_total_bytes:
                    raise UnsafeArchiveError(f"archive expands to more than {max_total_bytes} "
                                             "bytes")
                files.append(_write_file(tar, member, target, name))
                if on_file is not None:
                    on_file(name)
            for directory in sorted(made_dirs, key=len, reverse=True):
                _fsync_dir(directory)
            _fsync_dir(dest_real)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UnsafeArchiveError(f"{bundle.name}: not a readable .tar.gz bundle: {exc}") \
            from None
    return files


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: str,
                name: str) -> FileEntry:
    stream = tar.extractfile(member)
    if stream is None:  # pragma: no cover - isreg() members always have data
        raise UnsafeArchiveError(f"archive member {name!r} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise UnsafeArchiveError(f"archive member {name!r} appears twice") from None
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if size != member.size:
            raise UnsafeArchiveError(f"archive member {name!r} is truncated")
        os.fchmod(fd, 0o555 if member.mode & 0o111 else 0o444)
        os.fsync(fd)
    finally:
        os.close(fd)
    return FileEntry(name, digest.hexdigest(), size)
