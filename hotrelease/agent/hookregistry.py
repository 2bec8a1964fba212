"""Command hooks as processes: every one is recorded while it runs, stopped with the agent,
and found again after a killed agent (its leftovers).

A command hook runs in its own session (so a timeout can kill everything it started), which
also means it would survive the agent. So each one is recorded before it can act: it is
started behind a gate (`/bin/sh` blocked reading one line from a pipe, see `agent.hooks`),
its record goes into the registry (in memory, and `<data_dir>/hooks/<pgid>.json` once
`track_hooks` set a directory), and only then is the gate opened and the command exec'd in
the same process. If the agent dies before opening the gate, the pipe closes and the gate
exits without running anything. The record is removed when the hook ends;
`terminate_running_hooks` stops what is left when the agent stops, and `stop_leftover_hooks`
what a killed agent left behind (at the next start, before recovery reloads anything).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotrelease.agent.store import atomic_write, utcnow
from hotrelease.errors import AgentStopping

HOOK_ID_ENV = "HOTRELEASE_HOOK_ID"  # random per run, inherited by the hook's descendants
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when the agent stops a hook group
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed group to be gone
_POLL = 0.02


class HookRefused(Exception):
    """A hook was not started: its record could not be written (an ordinary failure)."""


@dataclass
class RunningHook:
    proc: subprocess.Popen[bytes]
    record: dict[str, Any]
    path: Path | None
    terminated: bool = False

    @property
    def pgid(self) -> int:
        return self.proc.pid


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks since boot) from /proc/<pid>/stat."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces or ')'
    try:
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _alive(state: str) -> bool:
    return state not in ("Z", "X", "x")  # a zombie has exited; only its parent can reap it


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pgid and _alive(stat[0]):
                members.append(int(entry))
    return members


def _carries(pid: int, token: str) -> bool:
    """Whether process `pid` has our hook id in its environment (so it descends from it)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{HOOK_ID_ENV}={token}".encode() in environ.split(b"\0")


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_gone(pgids: list[int], timeout: float) -> list[int]:
    """Wait (bounded) until the groups have no live member; returns those that still do."""
    deadline = time.monotonic() + timeout
    left = [g for g in pgids if _group_members(g)]
    while left and time.monotonic() < deadline:
        time.sleep(_POLL)
        left = [g for g in left if _group_members(g)]
    return left


def stop_groups(pgids: list[int], *, grace: float = TERM_GRACE,
                kill_wait: float = KILL_WAIT) -> dict[int, dict[str, Any]]:
    """SIGTERM every group, wait up to `grace`, SIGKILL the groups still alive, wait up to
    `kill_wait`. Per group: the signals sent and whether it is gone."""
    outcome: dict[int, dict[str, Any]] = {g: {"signals": [], "exited": False} for g in pgids}
    for pgid in pgids:
        if signal_group(pgid, signal.SIGTERM):
            outcome[pgid]["signals"].append("SIGTERM")
    left = wait_gone(pgids, grace)
    for pgid in left:
        if signal_group(pgid, signal.SIGKILL):
            outcome[pgid]["signals"].append("SIGKILL")
    left = wait_gone(left, kill_wait)
    for pgid in pgids:
        outcome[pgid]["exited"] = pgid not in left
    return outcome


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomic but not fsynced: the record only has to survive the agent process, not the
    machine - a reboot ends every hook anyway (and changes the boot id)."""
    atomic_write(path, (json.dumps(record, sort_keys=True) + "\n").encode(), durable=False)


class HookRegistry:
    """The command hooks running now. With a directory, each also has a record file there
    (`<pgid>.json`) for as long as it runs, so a later start can find it after a SIGKILL."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._running: dict[int, RunningHook] = {}
        self._closed = False

    def configure(self, directory: Path | None) -> None:
        """Record running hooks in `directory` (None: in memory only); accept hooks again."""
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.directory = directory
            self._closed = False

    def register(self, proc: subprocess.Popen[bytes], argv: list[str], kind: str,
                 env: dict[str, str], token: str) -> RunningHook:
        stat = _proc_stat(proc.pid)
        record = {"pid": proc.pid, "pgid": proc.pid, "start_time": stat[2] if stat else None,
                  "boot_id": _boot_id(), "argv": list(argv), "kind": kind,
                  "plugin": env.get("HOTRELEASE_PLUGIN"),
                  "version": env.get("HOTRELEASE_VERSION") or None, "token": token,
                  "agent_pid": os.getpid(), "started_at": utcnow()}
        with self._lock:  # so that no hook starts after `terminate` took its list
            if self._closed:
                raise AgentStopping(f"{argv[0]} not started: the agent is stopping")
            path = None
            if self.directory is not None:
                path = self.directory / f"{proc.pid}.json"
                try:
                    _write_record(path, record)
                except OSError as exc:
                    raise HookRefused(f"cannot record it in {self.directory}: "
                                      f"{exc.strerror or exc}") from None
            hook = RunningHook(proc, record, path)
            self._running[proc.pid] = hook
        return hook

    def unregister(self, hook: RunningHook, *, remove_record: bool) -> None:
        """The hook is over. Its record stays when its group may still be alive (an
        interrupted kill): the next start deals with it."""
        with self._lock:
            if self._running.get(hook.pgid) is hook:
                del self._running[hook.pgid]
        if remove_record and hook.path is not None:
            with contextlib.suppress(OSError):
                hook.path.unlink(missing_ok=True)

    def running(self) -> list[RunningHook]:
        with self._lock:
            return list(self._running.values())

    def terminate(self, *, grace: float = TERM_GRACE,
                  kill_wait: float = KILL_WAIT) -> list[int]:
        """Refuse new hooks from now on; stop every running hook group (SIGTERM, `grace`,
        SIGKILL) and wait for it. Returns the process groups signalled."""
        with self._lock:
            self._closed = True
            hooks = list(self._running.values())
            for hook in hooks:
                hook.terminated = True
        outcome = stop_groups([h.pgid for h in hooks], grace=grace, kill_wait=kill_wait)
        for hook in hooks:
            if outcome[hook.pgid]["exited"] and hook.path is not None:
                with contextlib.suppress(OSError):
                    hook.path.unlink(missing_ok=True)
        return [h.pgid for h in hooks if outcome[h.pgid]["signals"]]


registry = HookRegistry()  # the process-wide one: every command hook the agent runs


def track_hooks(directory: Path | None) -> HookRegistry:
    """Configure the process-wide registry: record running hooks under `directory` (the
    agent uses `<data_dir>/hooks`), and accept hooks again after a `terminate`."""
    registry.configure(directory)
    return registry


def terminate_running_hooks() -> list[int]:
    """Kill the process groups of hooks still running (the agent is stopping): SIGTERM,
    TERM_GRACE seconds, SIGKILL, and wait for them. Their callers get `AgentStopping`, and
    from then on no hook starts (until `track_hooks` is called again): a switch under way
    stops with its journal in place. Returns the process group ids it signalled."""
    return registry.terminate()


# --- leftovers of a previous run ----------------------------------------------------------


@dataclass
class Leftover:
    """A record file found at start-up, and what was done about it. `result`:
    killed_hook (its group was alive and ours: stopped), hook_gone (it had ended),
    pid_reused (its pid now belongs to another process: left alone), unreadable."""

    path: Path
    record: dict[str, Any]
    result: str
    reason: str
    signals: list[str] = field(default_factory=list)
    exited: bool = True


def _judge(record: dict[str, Any], boot: str | None) -> tuple[str, str]:
    """("ours", why) when the hook's group is alive and verifiably the hook's, else the
    result and reason for a group that must not be touched."""
    pid, pgid, token = record["pid"], record["pgid"], record.get("token")
    if boot is None or record.get("boot_id") != boot:
        return "hook_gone", "the node has rebooted since it started"
    stat = _proc_stat(pid)
    if stat is not None and _alive(stat[0]):
        if record.get("start_time") is None:
            return "pid_reused", (f"pid {pid} is alive but the hook's start time was not "
                                  "recorded: it cannot be told from another process")
        if stat[2] == record["start_time"]:
            return "ours", "still running"
        return "pid_reused", f"pid {pid} now belongs to another process (start time differs)"
    # The hook itself has exited; processes it started may still run in its group. The pid
    # cannot be reused while it names a live group, and they carry the hook's id.
    if isinstance(token, str) and any(_carries(m, token) for m in _group_members(pgid)):
        return "ours", "its processes were still running (the hook itself had exited)"
    return "hook_gone", "it had already ended"


def stop_leftover_hooks(directory: Path, *, grace: float = TERM_GRACE,
                        kill_wait: float = KILL_WAIT) -> list[Leftover]:
    """Find the hooks a previous run of the agent left running (record files in
    `directory`), stop those that are verifiably still alive and ours (process start time
    and boot id; a reused pid is never signalled), all at once: SIGTERM, `grace`, SIGKILL,
    wait up to `kill_wait`. Record files are not removed here: the caller records each
    outcome first, then removes `Leftover.path`. Temp files of an interrupted registration
    are removed (their hook was never let past its gate)."""
    if not directory.is_dir():
        return []
    boot = _boot_id()
    found: list[Leftover] = []
    ours: dict[int, Leftover] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        try:
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict):
                raise ValueError("not an object")
            for key in ("pid", "pgid"):
                if not isinstance(record.get(key), int) or isinstance(record[key], bool) \
                        or record[key] <= 1:
                    raise ValueError(f"bad {key}")
        except (OSError, ValueError) as exc:
            found.append(Leftover(path, {}, "unreadable",
                                  f"hook record {path.name} is unreadable ({exc}): nothing "
                                  "signalled"))
            continue
        verdict, why = _judge(record, boot)
        if verdict == "ours" and record["pgid"] not in ours:
            ours[record["pgid"]] = leftover = Leftover(path, record, "killed_hook", why)
        else:
            if verdict == "ours":
                verdict, why = "hook_gone", "a duplicate record of a group already handled"
            leftover = Leftover(path, record, verdict, why)
        found.append(leftover)
    outcome = stop_groups(list(ours), grace=grace, kill_wait=kill_wait)
    for pgid, leftover in ours.items():
        leftover.signals = outcome[pgid]["signals"]
        leftover.exited = outcome[pgid]["exited"]
    return found
