"""The agent's on-disk store: layout, durable writes, the `current` switch, journal, history.

Layout below `data_dir` (see docs/agent.md):

    releases/<name>/<version>/manifest.json       the verified manifest, re-serialized
    releases/<name>/<version>/manifest.json.sig   its envelope
    releases/<name>/<version>/files/...           the extracted bundle (files read-only)
    plugins/<name>/current -> ../../releases/<name>/<version>   (relative symlink)
    plugins/<name>/state.json                     current, previous, state, health, ...
    plugins/<name>/journal.json                   only while a switch is in progress
    plugins/<name>/history.jsonl                  append-only audit records
    plugins/<name>/advisories/*.json              security labels seen (floor never drops)
    hooks/<pgid>.json                             one record per command hook running
    tmp/                                          partial uploads; wiped at start-up
    agent-history.jsonl                           refusals not tied to a configured plugin
    agent.lock                                    flock: one agent per data dir

Every durable write is: temp file in the same directory, fsync, rename, fsync the directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hotrelease.errors import ConfigError
from hotrelease.trust.archive import fsync_dir

CRASH_ENV = "HOTRELEASE_AGENT_CRASH_AT"
CRASH_POINTS = (
    "upload.receiving",  # after the first chunk of the body hit the temp file
    "upload.verified",  # bundle verified, nothing extracted yet
    "upload.extracting",  # after the first file was extracted
    "upload.extracted",  # extracted and fsynced, before the rename into releases/
    "upload.stored",  # renamed into releases/, no history record yet
    "switch.journal",  # journal written, `current` untouched
    "switch.temp_symlink",  # temp symlink created, not renamed yet
    "switch.swapped",  # `current` renamed, reload hook not run yet
    "activate.health",  # during the health check
    "activate.rolling_back",  # health failed, `current` switched back, state not written
    "activate.committed",  # state written, journal not removed yet
    "recovery.swapped",  # during start-up recovery, after fixing `current`
)


def crash_point(name: str) -> None:
    """Fault injection for the crash-safety tests: die like `kill -9` at a named point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Readers see the old file or the new one, never a part. `durable=False` skips the
    fsyncs, for a file that only has to outlive the agent process, not the machine."""
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
log = logging.getLogger("hotrelease.agent")


def _remove_at(op: Callable[..., None], name: str, fd: int) -> None:
    try:
        op(name, dir_fd=fd)
    except PermissionError:  # a read-only directory (not as root): make it writable, retry
        os.fchmod(fd, 0o700)
        op(name, dir_fd=fd)


def _empty_dir(fd: int) -> list[str]:
    """Unlink every non-directory entry of the open directory; return the subdirectories."""
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if not is_dir:
            _remove_at(os.unlink, name, fd)
    return [name for name, is_dir in entries if is_dir]


def _rmtree(path: Path) -> None:
    """rm -rf without recursion, at any depth: one directory open at a time, entries removed
    relative to it (no path ever grows past PATH_MAX). Going back up through `..` is checked
    against the device and inode recorded on the way down."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        stack = [(path.name, os.fstat(fd), _empty_dir(fd))]  # (name, stat, subdirs left)
        while stack:
            name, _, pending = stack[-1]
            if pending:
                child_name = pending.pop()
                child = os.open(child_name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                stack.append((child_name, os.fstat(fd), _empty_dir(fd)))
                continue
            stack.pop()
            if not stack:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            here, expected = os.fstat(fd), stack[-1][1]
            if (here.st_dev, here.st_ino) != (expected.st_dev, expected.st_ino):
                raise OSError(f"{path}: the tree moved while it was being removed")
            _remove_at(os.rmdir, name, fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def remove_tree(path: Path) -> bool:
    """Best-effort rm -rf of one of the agent's own entries (a partial upload, a failed
    extraction). Never raises for I/O errors: cleanup must neither turn a refusal into a 500
    nor stop start-up; a failure is logged and False returned (start-up retries)."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            _rmtree(path)
        return True
    except OSError as exc:
        log.warning("hotrelease agent: cannot remove %s: %s", path, exc)
        return False


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.releases = self.root / "releases"
        self.plugins = self.root / "plugins"
        self.tmp = self.root / "tmp"
        self._history_lock = threading.Lock()
        self._lock_fd: int | None = None

    # --- start-up -----------------------------------------------------------------------
    def open(self) -> None:
        for d in (self.root, self.releases, self.plugins, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"{self.root}: another agent is already using this data "
                              "directory") from None
        self._lock_fd = fd
        # Partial uploads, extraction directories and temp files of durable writes never
        # survive a restart. One that cannot be removed is logged and recorded, and the
        # agent serves anyway (it is retried at the next start).
        leftovers = list(self.tmp.iterdir())
        for pdir in self.plugins.iterdir():
            leftovers += pdir.glob(".*.tmp-*")  # also .current.tmp-* (temp symlinks)
        for entry in leftovers:
            if not remove_tree(entry):
                self.append_history(None, {"action": "cleanup", "who": "agent",
                                           "result": "failed", "path": str(entry),
                                           "reason": "could not remove a leftover at "
                                                     "start-up (see the agent's log)"})

    def new_tmp_dir(self, prefix: str) -> Path:
        path = self.tmp / f"{prefix}-{secrets.token_hex(8)}"
        path.mkdir()
        return path

    # --- paths --------------------------------------------------------------------------
    def release_dir(self, name: str, version: str) -> Path:
        return self.releases / name / version

    def plugin_dir(self, name: str) -> Path:
        path = self.plugins / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def current_link(self, name: str) -> Path:
        return self.plugins / name / "current"

    def stored_versions(self, name: str) -> list[str]:
        base = self.releases / name
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir()
                      if p.is_dir() and (p / "manifest.json").is_file())

    # --- the switch -----------------------------------------------------------------------
    def read_current(self, name: str) -> str | None:
        link = self.current_link(name)
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def switch_current(self, name: str, version: str | None) -> None:
        """Point `current` at a stored version (None: remove it), atomically:
        temp symlink + rename over `current` + fsync the directory."""
        pdir = self.plugin_dir(name)
        link = pdir / "current"
        if version is None:
            if link.is_symlink():
                link.unlink()
                fsync_dir(pdir)
            return
        tmp = pdir / f".current.tmp-{secrets.token_hex(4)}"
        os.symlink(os.path.join("..", "..", "releases", name, version), tmp)
        crash_point("switch.temp_symlink")
        os.replace(tmp, link)
        fsync_dir(pdir)

    # --- state, journal ---------------------------------------------------------------------
    def load_state(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] | None = read_json(self.plugins / name / "state.json")
        if state is None:
            state = {"name": name, "current": None, "previous": None, "state": "empty",
                     "activated_at": None, "highest_activated": None, "health": None,
                     "last_result": None}
        return state

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        write_json(self.plugin_dir(name) / "state.json", state)

    def journal_path(self, name: str) -> Path:
        return self.plugins / name / "journal.json"

    def write_journal(self, name: str, journal: dict[str, Any]) -> None:
        write_json(self.plugin_dir(name) / "journal.json", journal)

    def clear_journal(self, name: str) -> None:
        path = self.journal_path(name)
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    # --- history ---------------------------------------------------------------------------
    def append_history(self, name: str | None, record: dict[str, Any]) -> dict[str, Any]:
        record = {"time": utcnow(), **record}
        path = (self.plugin_dir(name) / "history.jsonl" if name is not None
                else self.root / "agent-history.jsonl")
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        with self._history_lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def versions_with_result(self, name: str, result: str) -> set[str]:
        """Versions that have a history record with this `result`. Streams the file (it only
        grows) and parses only the lines that can match."""
        path = self.plugins / name / "history.jsonl"
        needle = json.dumps({"result": result})[1:-1].encode()  # as append_history writes it
        found: set[str] = set()
        try:
            with open(path, "rb") as f:
                for line in f:
                    if needle not in line:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:  # a torn last line after a power cut
                        continue
                    if record.get("result") == result and isinstance(record.get("version"),
                                                                     str):
                        found.add(record["version"])
        except FileNotFoundError:
            pass
        return found

    def read_history(self, name: str, limit: int) -> list[dict[str, Any]]:
        path = self.plugins / name / "history.jsonl"
        if not path.exists():
            return []
        lines = path.read_bytes().splitlines()
        out = []
        for line in lines[-limit:] if limit else []:
            try:
                out.append(json.loads(line))
            except ValueError:  # a torn last line after a power cut: skip it
                continue
        return out

    # --- advisories --------------------------------------------------------------------------
    def advisories_dir(self, name: str) -> Path:
        path = self.plugin_dir(name) / "advisories"
        path.mkdir(exist_ok=True)
        return path
