"""Start-up recovery: make `current`, state and history agree after a crash.

Runs before the agent serves. Idempotent: a crash during recovery is recovered by the next
start. First the hooks a killed agent left running are stopped (they must not act after
recovery), then interrupted switches are finished or undone.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from hotrelease.agent.core import AgentCore
from hotrelease.agent.hookregistry import stop_leftover_hooks, track_hooks
from hotrelease.agent.hooks import run_reload
from hotrelease.agent.store import crash_point

HOOKS_DIR = "hooks"  # <data_dir>/hooks/<pgid>.json: one record per command hook running


def recover(agent: AgentCore) -> list[dict[str, Any]]:
    """Stop leftover hooks, then finish or undo a switch interrupted by a crash, so
    `current` and state agree. A SIGTERM meanwhile stops the hook being run first."""
    with _hooks_die_with_the_agent():
        agent.store.open()  # the data dir's lock first: never touch another agent's hooks
        done = recover_leftover_hooks(agent)
        track_hooks(agent.store.root / HOOKS_DIR)  # every hook from here on is recorded
        return done + _recover_switches(agent) + _recover_uploads(agent)


def recover_leftover_hooks(agent: AgentCore) -> list[dict[str, Any]]:
    """Command hooks (reload, precheck, health) a previous run left running - it was killed
    while they ran, and they run in their own session - are stopped before recovery reloads
    anything: their process group gets SIGTERM, then SIGKILL, and is waited for (bounded).
    Only a group verifiably started by the agent is signalled (pid, start time, boot id); a
    pid now used by another process is left alone. Each record is recorded in the plugin's
    history (action `recover`), then removed."""
    done = []
    for leftover in stop_leftover_hooks(agent.store.root / HOOKS_DIR):
        rec = leftover.record
        plugin = rec.get("plugin") if isinstance(rec.get("plugin"), str) else None
        name = plugin if plugin in agent.config.plugins else None
        argv = rec.get("argv") if isinstance(rec.get("argv"), list) else []
        what = (f"{rec.get('kind', 'command')} hook {argv[0] if argv else '?'!s} "
                f"(pid {rec.get('pid')}, started {rec.get('started_at')}) of the previous run")
        if leftover.result == "killed_hook":
            reason = (f"{what} was still running at start-up ({leftover.reason}): stopped "
                      f"with {', '.join(leftover.signals) or 'no signal (it had ended)'}"
                      + ("" if leftover.exited else "; not gone yet after SIGKILL")
                      + ", before recovery")
        elif leftover.result == "unreadable":
            reason = leftover.reason
        else:
            reason = f"{what}: {leftover.reason}; nothing signalled"
        entry: dict[str, Any] = {
            "action": "recover", "who": "agent", "result": leftover.result, "reason": reason,
            "hook": {k: rec.get(k) for k in ("kind", "argv", "pid", "pgid", "start_time",
                                             "version", "started_at", "agent_pid")},
            "record_file": leftover.path.name}
        if leftover.result == "killed_hook":
            entry.update(signals=leftover.signals, exited=leftover.exited)
        if name is None and plugin is not None:
            entry["plugin"] = plugin  # a slot no longer configured: agent-history.jsonl
        done.append({"name": name or plugin or "agent",
                     **agent.store.append_history(name, entry)})
        leftover.path.unlink(missing_ok=True)  # after the history record: never lost
    return done


class _Stopping(BaseException):
    """SIGTERM during recovery: unwinds (a running hook is killed on the way out)."""


@contextlib.contextmanager
def _hooks_die_with_the_agent() -> Iterator[None]:
    """Until the server installs its own handlers, SIGTERM's default would end the agent at
    once and leave a running hook (its own session) behind. Instead the signal unwinds
    recovery - `_run_command` stops the hook's group on the way out - and then the agent dies
    of SIGTERM as before. What recovery left unfinished is finished by the next start."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_IGN)  # once: the cleanup is not interrupted again
        raise _Stopping(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Stopping:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _recover_switches(agent: AgentCore) -> list[dict[str, Any]]:
    """Finish or undo a switch interrupted by a crash, so `current` and state agree."""
    store = agent.store
    done = []
    for name, pcfg in agent.config.plugins.items():
        store.plugin_dir(name)
        journal_path = store.journal_path(name)
        state = store.load_state(name)
        journal = None
        if journal_path.exists():
            try:
                journal = json.loads(journal_path.read_bytes())
            except ValueError:
                journal = None  # torn write of the journal itself: nothing was switched
        link_version = store.read_current(name)
        recorded = state.get("current")
        if journal is None and link_version == recorded and not journal_path.exists():
            continue
        if link_version != recorded:
            store.switch_current(name, recorded)
        crash_point("recovery.swapped")
        if journal is not None or link_version != recorded:
            current_path = str(store.current_link(name))
            ok, detail = (run_reload(pcfg.reload, name=name, version=recorded,
                                     current_path=current_path)
                          if recorded is not None else (True, "nothing to reload"))
            what = (f"{journal.get('op')} {journal.get('from')} -> {journal.get('to')}"
                    if journal else "switch")
            outcome = ("finished" if journal and recorded == journal.get("to")
                       else "undone")
            entry: dict[str, Any] = {
                "action": "recover", "who": "agent", "version": recorded, "result": outcome,
                "reason": f"agent restarted during {what}; current is {recorded}",
                "reload": detail if ok else f"reload failed: {detail}"}
            failure = journal.get("reason") if journal else None
            if journal is not None and isinstance(failure, str):  # killed while rolling back
                entry["failure"] = failure
                entry["reason"] = (f"agent restarted while rolling back {what} after: "
                                   f"{failure}; current is {recorded}")
                if outcome == "undone":
                    state.update({"last_result": "rolled_back", "last_failure": {
                        "version": journal.get("to"), "reason": failure,
                        "at": journal.get("started_at")}})
                    store.save_state(name, state)
            rec = store.append_history(name, entry)
            done.append({"name": name, **rec})
        store.clear_journal(name)
    return done


def _recover_uploads(agent: AgentCore) -> list[dict[str, Any]]:
    """Every release in releases/ has a history record: one renamed into place by an upload
    that was killed before recording it gets a `stored` record now. (Nothing reaches
    releases/ unverified: the rename is the upload's last step.)"""
    store = agent.store
    done = []
    for name in agent.config.plugins:
        stored = store.stored_versions(name)
        if not stored:
            continue
        recorded = store.versions_with_result(name, "stored")
        for version in stored:
            if version in recorded:
                continue
            info = agent.release_info(name, version)
            rec = store.append_history(name, {
                "action": "recover", "who": "agent", "version": version, "result": "stored",
                "release_id": info.release_id if info else None,
                "bundle_sha256": info.bundle_sha256 if info else None,
                "reason": f"{name}@{version} is in releases/ with no history record of its "
                          "upload (the agent stopped between storing and recording it)"})
            done.append({"name": name, **rec})
    return done
