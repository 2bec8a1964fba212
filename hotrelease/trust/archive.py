"""Safe extraction of a plugin bundle (`.tar.gz`) into a fresh directory.

Nothing is written until every member header has been read and checked (pass 1), under
agent-side limits (`ExtractLimits`, the `[agent]` keys of agent.toml) that hold whatever the
signer declared:

- `max_pax_header_bytes`: extended headers (pax `x`/`g`, GNU long name/link) are refused from
  their *declared* size, before tarfile reads them into memory (`_HeaderGuard`), and a member
  may take only a few header reads (no chains of extended headers, no sparse maps);
- `max_members`: entries created on disk (files and directories, implicit parents included);
- `max_path_depth`, `max_path_length` (bytes), `NAME_MAX` per component, and the whole path
  where a file lands (the agent's own prefix included) `PATH_HEADROOM` bytes under `PATH_MAX`;
- `max_extracted_bytes`: the sum of the regular files' sizes (and the signed total, if given).

Each member then passes two independent layers:

1. Python's own `tarfile.data_filter` (the `filter="data"` policy);
2. our own rules, which do not trust layer 1 (it has had bypass CVEs):
   - the name is relative and normalised (no absolute path, no `..`, `.`, empty part,
     backslash or NUL) and appears only once;
   - only regular files and directories: symlinks, hardlinks, devices, FIFOs, sparse files
     and anything else are refused, never skipped; no link name; pax keywords only from the
     short list tarfile itself writes, with short values (bounded memory per member);
   - no setuid / setgid / sticky bits;
   - the real path of the member's parent directory (symlinks resolved) is inside the real
     path of the destination (a path comparison, not a string prefix: `dest-evil` is not
     inside `dest`), checked again just before the member is written.

Files are created with O_CREAT|O_EXCL|O_NOFOLLOW (never through an existing entry), hashed
while written, fsynced, and finally made read-only. The caller gets the (path, sha256, size)
of every file so it can compare what was written with what was signed.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hotrelease.errors import UnsafeArchiveError
from hotrelease.trust.digest import CHUNK, Digest, sha256_stream
from hotrelease.trust.manifest import FileEntry, member_path_problem

_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
NAME_MAX = 255  # bytes in one path component (Linux, every common file system)
PATH_MAX = 4096  # bytes in a whole path, terminating NUL included
PATH_HEADROOM = 256  # room for the longer final location releases/<name>/<version>/files
_HEADER_READS = 12  # reads tarfile may make for one member's headers (a pax + a GNU pair fit)
# The pax keywords tarfile writes for a plain file; anything else (GNU sparse maps, global
# comments, xattrs) is refused, so no member can carry (and tarfile copy) a big dict.
_PAX_KEYS = frozenset({"path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname",
                       "gname", "hdrcharset"})
_PAX_VALUE_MAX = 64  # characters, for every keyword but `path` (bounded by max_path_length)


@dataclass(frozen=True)
class ExtractLimits:
    """What one bundle may expand to on this node, whatever its signers declared."""

    max_extracted_bytes: int = 2 * 1024 * 1024 * 1024
    max_members: int = 20_000
    max_path_depth: int = 32
    max_path_length: int = 1024  # bytes (UTF-8) of a member path
    max_pax_header_bytes: int = 64 * 1024


DEFAULT_LIMITS = ExtractLimits()


def is_within(root: str, path: str) -> bool:
    """True if `path` is `root` or below it. Both must already be real, absolute paths."""
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives / mix of absolute and relative
        return False


def check_member_name(name: str) -> str:
    """Return the normalised member name (without a trailing '/') or raise."""
    clean = name[:-1] if isinstance(name, str) and name.endswith("/") else name
    problem = member_path_problem(clean)
    if problem is not None:
        raise UnsafeArchiveError(f"archive member {name!r}: {problem}")
    return clean


def _short(name: str) -> str:
    return repr(name) if len(name) <= 80 else f"{name[:60]!r}... ({len(name)} characters)"


def _check_shape(member: tarfile.TarInfo, dest_real: str, limits: ExtractLimits) -> str:
    """Length and depth: the OS limits are never reached. Runs before any other check quotes
    the name."""
    raw = os.fsencode(member.name)
    if len(raw.rstrip(b"/")) > limits.max_path_length:
        raise UnsafeArchiveError(f"archive member {_short(member.name)}: path longer than "
                                 f"{limits.max_path_length} bytes (max_path_length)")
    name = check_member_name(member.name)
    parts = name.split("/")
    if len(parts) > limits.max_path_depth:
        raise UnsafeArchiveError(f"archive member {_short(name)}: {len(parts)} levels deep, "
                                 f"more than {limits.max_path_depth} (max_path_depth)")
    if any(len(os.fsencode(part)) > NAME_MAX for part in parts):
        raise UnsafeArchiveError(f"archive member {_short(name)}: a path part is longer than "
                                 f"{NAME_MAX} bytes")
    if len(os.fsencode(os.path.join(dest_real, name))) > PATH_MAX - 1 - PATH_HEADROOM:
        raise UnsafeArchiveError(f"archive member {_short(name)}: its path on this node would "
                                 f"be longer than {PATH_MAX - 1 - PATH_HEADROOM} bytes")
    return name


def _check_landing(dest_real: str, name: str) -> None:
    target = os.path.join(dest_real, name)
    parent_real = os.path.realpath(os.path.dirname(target))
    if not is_within(dest_real, parent_real):
        raise UnsafeArchiveError(f"archive member {name!r} would land outside the "
                                 "destination directory")


def _check_member(member: tarfile.TarInfo, dest_real: str,
                  limits: ExtractLimits = DEFAULT_LIMITS) -> str:
    name = _check_shape(member, dest_real, limits)
    if not (member.isreg() or member.isdir()) or member.issparse():
        kind = ("symlink" if member.issym() else "hardlink" if member.islnk() else
                "device" if member.ischr() or member.isblk() else
                "FIFO" if member.isfifo() else "special member")
        raise UnsafeArchiveError(f"archive member {name!r} is a {kind}: only regular files "
                                 "and directories are allowed")
    # What a member keeps in memory stays small (tarfile holds every member it has read).
    if member.linkname:
        raise UnsafeArchiveError(f"archive member {name!r} has a link name")
    for key, value in member.pax_headers.items():
        if key not in _PAX_KEYS or (key != "path" and len(value) > _PAX_VALUE_MAX):
            raise UnsafeArchiveError(f"archive member {name!r}: pax header {_short(key)} is "
                                     "not allowed (or too long)")
    if member.mode & _SPECIAL_BITS:
        raise UnsafeArchiveError(f"archive member {name!r} has setuid/setgid/sticky bits")
    # Layer 1: the stdlib "data" filter (raises tarfile.FilterError subclasses).
    try:
        tarfile.data_filter(member, dest_real)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"archive member {name!r} refused: {exc}") from None
    # Layer 2: our own real-path check of where it would land.
    _check_landing(dest_real, name)
    return name


class _HeaderGuard:
    """The decompressed stream, as tarfile sees it. While tarfile parses one member's headers
    (`_GuardedTarFile.next`), every read is checked *before* it happens: no single read over
    `max_pax_header_bytes` (a pax or GNU long-name header reads its declared size at once),
    a few reads per member and a bounded total (chains of extended headers, sparse maps).
    Member data (read by `extractfile`, outside `next`) passes through."""

    def __init__(self, raw: gzip.GzipFile, cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self._armed = False
        self._reads = 0
        self._left = 0

    def arm(self) -> None:
        self._armed, self._reads, self._left = True, 0, self._cap + _HEADER_READS * 512

    def disarm(self) -> None:
        self._armed = False

    def read(self, size: int = -1) -> bytes:
        if self._armed:
            self._reads += 1
            self._left -= size
            if size < 0 or size > self._cap or self._left < 0 or self._reads > _HEADER_READS:
                raise UnsafeArchiveError(
                    f"archive member at offset {self._raw.tell()}: extended headers over "
                    f"{self._cap} bytes (max_pax_header_bytes) or chained")
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


class _GuardedTarFile(tarfile.TarFile):
    def __init__(self, guard: _HeaderGuard) -> None:
        self._guard = guard  # before __init__, which reads the first member
        super().__init__(fileobj=guard, mode="r")  # type: ignore[arg-type]  # read/seek/tell

    def next(self) -> tarfile.TarInfo | None:
        self._guard.arm()
        try:
            return super().next()
        finally:
            self._guard.disarm()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a new file, a rename) durable; the agent's store uses
    this one too."""
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


def _scan(tar: tarfile.TarFile, dest_real: str, limits: ExtractLimits,
          max_bytes: int, signed: bool) -> list[tuple[tarfile.TarInfo, str]]:
    """Pass 1: every header checked, nothing written. Each member is refused as soon as it is
    read, before tarfile reads (or skips) anything after it."""
    checked: list[tuple[tarfile.TarInfo, str]] = []
    seen: set[str] = set()
    created: set[str] = set()  # every entry extraction would create, implicit parents too
    total = 0
    for member in tar:
        name = _check_member(member, dest_real, limits)
        if name in seen:
            raise UnsafeArchiveError(f"archive member {name!r} appears twice")
        seen.add(name)
        prefix = name
        while prefix and prefix not in created:
            created.add(prefix)
            prefix = prefix.rpartition("/")[0]
        if len(created) > limits.max_members:
            raise UnsafeArchiveError(f"archive creates more than {limits.max_members} files "
                                     "and directories (max_members)")
        if member.isreg():
            total += member.size
            if total > max_bytes:
                why = "the signed total" if signed else "max_extracted_bytes"
                raise UnsafeArchiveError(f"archive expands to more than {max_bytes} bytes "
                                         f"({why})")
        checked.append((member, name))
    return checked


def safe_extract(bundle: Path, dest: Path, *, limits: ExtractLimits | None = None,
                 max_total_bytes: int | None = None,
                 on_file: Callable[[str], None] | None = None) -> list[FileEntry]:
    """Extract `bundle` into `dest`, which must exist and be empty. Raises
    `UnsafeArchiveError` on the first unsafe member (the caller deletes `dest`).
    `max_total_bytes` (e.g. the signed manifest's total) can only lower
    `limits.max_extracted_bytes`."""
    limits = limits or DEFAULT_LIMITS
    max_bytes = limits.max_extracted_bytes
    signed = max_total_bytes is not None and max_total_bytes < max_bytes
    if signed:
        max_bytes = max_total_bytes  # type: ignore[assignment]
    dest_real = os.path.realpath(dest)
    if not os.path.isdir(dest_real) or os.listdir(dest_real):
        raise UnsafeArchiveError(f"{dest}: extraction target must be an empty directory")
    made_dirs: set[str] = set()
    files: list[FileEntry] = []
    try:
        with open(bundle, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                _GuardedTarFile(_HeaderGuard(gz, limits.max_pax_header_bytes)) as tar:
            checked = _scan(tar, dest_real, limits, max_bytes, signed)
            for member, name in checked:  # pass 2: write
                target = os.path.join(dest_real, name)
                if member.isdir():
                    if target not in made_dirs:  # else: implicit parent created earlier
                        _ensure_dirs(dest_real, name, made_dirs)
                    continue
                _ensure_dirs(dest_real, os.path.dirname(name), made_dirs)
                _check_landing(dest_real, name)
                files.append(_write_file(tar, member, target, name))
                if on_file is not None:
                    on_file(name)
            for directory in sorted(made_dirs, key=len, reverse=True):
                fsync_dir(directory)
            fsync_dir(dest_real)
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
    digest = Digest()
    try:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if digest.size != member.size:
            raise UnsafeArchiveError(f"archive member {name!r} is truncated")
        os.fchmod(fd, 0o555 if member.mode & 0o111 else 0o444)
        os.fsync(fd)
    finally:
        os.close(fd)
    return FileEntry(name, digest.hexdigest(), digest.size)


def scan_bundle(path: Path) -> list[FileEntry]:
    """Stream through a bundle and return its regular files' entries, refusing anything
    that is not a plain relative file or directory. Reads in bounded memory; writes nothing
    (the build's own check of what it bundled, and `verify` before a local publish)."""
    files: list[FileEntry] = []
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if member_path_problem(name.rstrip("/") if member.isdir() else name):
                    raise UnsafeArchiveError(f"bundle member {name!r} has an unsafe path")
                if member.isdir():
                    continue
                if not member.isreg():
                    raise UnsafeArchiveError(f"bundle member {name!r} is not a regular file "
                                             "(links and devices are refused)")
                stream = tar.extractfile(member)
                assert stream is not None
                digest, size = sha256_stream(stream)
                files.append(FileEntry(name, digest, size))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise UnsafeArchiveError(f"{path}: not a readable .tar.gz bundle: {exc}") from None
    return files
