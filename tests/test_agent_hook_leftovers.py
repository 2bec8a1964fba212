"""Command hooks never outlive the agent (issue 11 item 11).

A reload/precheck/health command runs in its own session, so it would survive the agent. Each
one is recorded (`<data_dir>/hooks/<pgid>.json`) before it is let past its start gate; a
SIGKILLed agent's leftovers are stopped at the next start before recovery reloads anything;
a SIGTERM stops the running hook's group before the agent exits; a pid now used by another
process is never signalled.

The hook used here is a Python script that records its start (which hooks were still alive
then, and whether its registry record already existed), starts a grandchild in its own
process group, sleeps `delay` seconds (a file the test writes) and then writes markers: a
marker missing while its writer is dead proves the hook was stopped before it acted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import read_history, wait_until

from hotrelease.agent.config import ReloadHook
from hotrelease.agent.hookregistry import (
    HOOK_ID_ENV,
    _boot_id,
    _proc_stat,
    stop_leftover_hooks,
    terminate_running_hooks,
    track_hooks,
)
from hotrelease.agent.hooks import run_reload
from hotrelease.errors import AgentError, AgentStopping, UnreachableError

CRASH = "HOTRELEASE_AGENT_CRASH_AT"

HOOK_SCRIPT = r'''
import json, os, pathlib, subprocess, sys, time
d = pathlib.Path(sys.argv[1])
registry = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
def alive(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
others = []
for p in d.glob("started-*"):
    info = json.loads(p.read_text())
    others += [pid for pid in (info["pid"], info["child"]) if pid and alive(pid)]
delay = float((d / "delay").read_text()) if (d / "delay").exists() else 0.0
me = os.getpid()
child = None
if delay:
    marker = str(d / f"grandchild-done-{me}")
    child = subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; "
                              f"time.sleep({delay}); pathlib.Path({marker!r}).write_text('')"])
info = {"pid": me, "child": child.pid if child else None, "pgid": os.getpgid(0),
        "alive": others, "version": os.environ.get("HOTRELEASE_VERSION"),
        "registered": (registry / f"{os.getpgid(0)}.json").is_file() if registry else None}
tmp = d / f".tmp-{me}"
tmp.write_text(json.dumps(info))
os.replace(tmp, d / f"started-{me}")
time.sleep(delay)
(d / f"done-{me}").write_text("")
'''


def proc_start_time(pid: int) -> int:
    """The start time (clock ticks since boot) of a process the test knows exists."""
    stat = _proc_stat(pid)
    assert stat is not None
    return stat[2]


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


class Hooks:
    """The hook script, its working directory (delay, markers) and what it recorded."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "hookwork"
        self.dir.mkdir(parents=True)
        self.script = root / "hook.py"
        self.script.write_text(HOOK_SCRIPT)

    def argv(self, registry: Path | None = None) -> list[str]:
        return [sys.executable, str(self.script), str(self.dir),
                *([str(registry)] if registry else [])]

    def delay(self, seconds: float) -> None:
        (self.dir / "delay").write_text(str(seconds))

    def started(self) -> dict[int, dict]:
        return {int(p.name.split("-")[1]): json.loads(p.read_text())
                for p in self.dir.glob("started-*")}

    def wait_new(self, before: dict[int, dict], version: str | None = None) -> dict:
        def new() -> dict | None:
            for pid, info in self.started().items():
                if pid not in before and (version is None or info["version"] == version):
                    return info
            return None
        return wait_until(new, 30, "a hook to start")

    def acted(self, info: dict) -> bool:
        return ((self.dir / f"done-{info['pid']}").exists()
                or (self.dir / f"grandchild-done-{info['pid']}").exists())

    def kill_all(self) -> None:
        for info in self.started().values():
            for pid in (info["pid"], info["child"]):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hooks(tmp_path: Path):
    h = Hooks(tmp_path)
    yield h
    h.kill_all()  # whatever a failing test left behind


@pytest.fixture
def registry():
    """The process-wide registry of this test process, reset afterwards."""
    yield track_hooks
    track_hooks(None)


def command_node(make_agent, build_plugin, hooks: Hooks, tmp_path: Path, *,
                 health: str = ""):
    """An agent whose greeter slot reloads with the hook script; 1.0.0 active, 1.1.0 stored."""
    root = tmp_path / "node"
    argv = json.dumps(hooks.argv(root / "data" / "hooks"))
    plugins = f"[plugins.greeter]\nreload = {{ command = {argv}, timeout = 120 }}\n{health}"
    agent = make_agent(plugins=plugins, root=root)
    client = agent.client()
    for version in ("1.0.0", "1.1.0"):
        client.upload(build_plugin(version).manifest)
    assert client.activate("greeter", "1.0.0")["result"] == "activated"
    return agent


def registry_files(agent) -> list[Path]:
    directory = agent.data_dir / "hooks"
    return sorted(directory.iterdir()) if directory.is_dir() else []


def activate_in_background(agent, version: str) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["answer"] = agent.client().activate("greeter", version, timeout=120)
        except (UnreachableError, AgentError) as exc:  # the agent went away meanwhile
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --- (1) SIGKILL: the leftover is stopped at the next start, before recovery reloads --------


def test_sigkilled_agent_leftover_hook_is_stopped_before_recovery(make_agent, build_plugin,
                                                                  hooks, tmp_path) -> None:
    agent = command_node(make_agent, build_plugin, hooks, tmp_path)
    hooks.delay(60)
    before = hooks.started()
    thread, _ = activate_in_background(agent, "1.1.0")
    leftover = hooks.wait_new(before, "1.1.0")
    assert leftover["registered"] is True  # recorded before it could act
    agent.proc.kill()
    agent.wait_exit()
    agent.proc = None
    thread.join(30)
    # The hook survived its agent (own session): that is what recovery must deal with.
    assert alive(leftover["pid"]) and alive(leftover["child"])
    [record_file] = registry_files(agent)
    record = json.loads(record_file.read_text())
    assert record["pid"] == record["pgid"] == leftover["pid"] == leftover["pgid"]
    assert record["argv"] == hooks.argv(agent.data_dir / "hooks")
    assert record["plugin"] == "greeter" and record["kind"] == "reload"
    assert record["version"] == "1.1.0" and record["start_time"] == proc_start_time(
        leftover["pid"])

    hooks.delay(0)
    before = hooks.started()
    agent.start()  # recovery has run when the agent answers
    assert not alive(leftover["pid"]) and not alive(leftover["child"])
    assert not hooks.acted(leftover)  # and since both are dead, it never will
    own = hooks.wait_new(before)  # recovery's own reload of 1.0.0
    assert own["version"] == "1.0.0" and own["alive"] == []  # the leftover was gone first
    history = agent.history()
    kinds = [(r["action"], r["result"]) for r in history]
    killed = kinds.index(("recover", "killed_hook"))
    assert killed < kinds.index(("recover", "undone"))
    rec = history[killed]
    assert rec["hook"]["pid"] == leftover["pid"] and rec["hook"]["kind"] == "reload"
    assert rec["hook"]["version"] == "1.1.0"
    assert rec["signals"][0] == "SIGTERM" and rec["exited"] is True
    assert "before recovery" in rec["reason"]
    assert registry_files(agent) == []
    state = agent.client().plugin("greeter")
    assert state["current"] == state["current_link"] == "1.0.0"
    assert agent.client().activate("greeter", "1.1.0")["result"] == "activated"  # twin


# --- (2) SIGTERM: no hook group is left when the agent has exited ----------------------------


def test_sigterm_during_recovery_stops_the_running_hook(make_agent, build_plugin, hooks,
                                                        tmp_path) -> None:
    """Before the server runs, SIGTERM's default would end the agent and leave recovery's
    reload hook running on its own."""
    agent = command_node(make_agent, build_plugin, hooks, tmp_path)
    agent.stop()
    agent.start(env={CRASH: "switch.swapped"})
    with pytest.raises(UnreachableError):
        agent.client().activate("greeter", "1.1.0")
    assert agent.wait_exit() == -signal.SIGKILL
    agent.proc = None
    hooks.delay(60)
    before = hooks.started()
    agent.start(wait=False)
    running = hooks.wait_new(before, "1.0.0")  # recovery undoing the switch: reload 1.0.0
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait_exit(timeout=30) == -signal.SIGTERM
    agent.proc = None
    assert not alive(running["pid"]) and not alive(running["child"])
    assert not hooks.acted(running)
    assert registry_files(agent) == []
    # The journal is still there: the next start recovers, with a hook that finishes.
    assert (agent.data_dir / "plugins" / "greeter" / "journal.json").exists()
    restart_recovers_undone(agent, hooks)


def restart_recovers_undone(agent, hooks) -> None:
    """The next start (with a hook that finishes) undoes the switch that was cut off."""
    hooks.delay(0)
    agent.start()
    state = agent.client().plugin("greeter")
    assert state["current"] == state["current_link"] == "1.0.0"
    last = agent.history()[-1]
    assert (last["action"], last["result"]) == ("recover", "undone")


def test_sigterm_while_serving_lets_the_activation_finish(make_agent, build_plugin, hooks,
                                                          tmp_path) -> None:
    """Twin: while serving, a SIGTERM is a graceful stop - the activation under way finishes
    (its hook is bounded by its timeout), is recorded, and nothing is left running."""
    agent = command_node(make_agent, build_plugin, hooks, tmp_path)
    hooks.delay(1.0)
    before = hooks.started()
    thread, outcome = activate_in_background(agent, "1.1.0")
    running = hooks.wait_new(before, "1.1.0")
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait_exit(timeout=60) == -signal.SIGTERM
    agent.proc = None
    thread.join(30)
    assert outcome["answer"]["result"] == "activated"
    assert hooks.acted(running) and not alive(running["pid"]) and not alive(running["child"])
    assert registry_files(agent) == []
    assert read_history(agent.data_dir)[-1]["result"] == "activated"


def test_sigterm_past_the_graceful_stop_kills_the_hook_and_keeps_the_journal(
        make_agent, build_plugin, hooks, tmp_path) -> None:
    """A hook still running when the graceful stop is over ([agent] shutdown_timeout) is
    killed at the agent's shutdown; the switch stops where it is (journal kept, no false
    `rolled_back`) and the next start recovers it."""
    agent = command_node(make_agent, build_plugin, hooks, tmp_path)
    agent.stop()
    agent.config.write_text(agent.config.read_text().replace(
        "[agent]\n", "[agent]\nshutdown_timeout = 0.3\n"))
    agent.start()
    hooks.delay(60)
    before = hooks.started()
    thread, outcome = activate_in_background(agent, "1.1.0")
    running = hooks.wait_new(before, "1.1.0")
    count = len(agent.history())
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait_exit(timeout=30) == -signal.SIGTERM
    agent.proc = None
    thread.join(30)
    assert "answer" not in outcome  # no verdict was given for the cut-off activation
    assert not alive(running["pid"]) and not alive(running["child"])
    assert not hooks.acted(running)
    assert registry_files(agent) == []
    assert len(hooks.started()) == len(before) + 1  # no rollback reload started meanwhile
    assert len(agent.history()) == count  # nothing judged: no activated, no rolled_back
    assert (agent.data_dir / "plugins" / "greeter" / "journal.json").exists()
    restart_recovers_undone(agent, hooks)


def test_terminate_running_hooks_kills_their_groups_and_refuses_new_ones(
        hooks, registry, tmp_path) -> None:
    """What the agent's shutdown runs after the server stopped."""
    directory = tmp_path / "hooks"
    registry(directory)
    hook = ReloadHook("command", command=hooks.argv(directory), timeout=120)
    hooks.delay(60)
    result: dict = {}
    def run() -> None:
        try:
            result["r"] = run_reload(hook, name="greeter", version="2.0.0", current_path="x")
        except AgentStopping as exc:
            result["stopped"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    running = hooks.wait_new({})
    assert running["registered"] is True
    assert terminate_running_hooks() == [running["pgid"]]
    assert not alive(running["pid"]) and not alive(running["child"])
    thread.join(15)
    assert "r" not in result and "was stopped: the agent is stopping" in str(result["stopped"])
    assert list(directory.iterdir()) == []
    assert not hooks.acted(running)
    # From now on no hook starts (the gate is never opened).
    hooks.delay(0)
    with pytest.raises(AgentStopping, match="not started: the agent is stopping"):
        run_reload(hook, name="greeter", version="2.0.0", current_path="x")
    assert len(hooks.started()) == 1
    registry(directory)  # configured again: hooks run
    assert run_reload(hook, name="greeter", version="2.0.0", current_path="x")[0]
    assert terminate_running_hooks() == []  # nothing running: nothing signalled


def test_a_hook_that_cannot_be_recorded_never_runs(hooks, registry, tmp_path) -> None:
    directory = tmp_path / "hooks"
    registry(directory)
    directory.rmdir()
    directory.write_text("not a directory")
    ok, detail = run_reload(ReloadHook("command", command=hooks.argv()), name="greeter",
                            version="2.0.0", current_path="x")
    assert not ok and "not started: cannot record it" in detail
    assert hooks.started() == {}  # the command never ran
    registry(None)  # twin: without a registry directory it runs
    assert run_reload(ReloadHook("command", command=hooks.argv()), name="greeter",
                      version="2.0.0", current_path="x")[0]
    assert len(hooks.started()) == 1


# --- (3) the positive twin: a hook that finishes leaves nothing behind ----------------------


def test_finished_hooks_leave_no_record_and_nothing_is_killed(make_agent, build_plugin,
                                                              hooks, tmp_path) -> None:
    health = ('health = { command = ["true"], interval = 0, min_healthy_seconds = 0, '
              "retries = 0 }\n")
    agent = command_node(make_agent, build_plugin, hooks, tmp_path, health=health)
    assert agent.client().activate("greeter", "1.1.0")["result"] == "activated"
    runs = hooks.started()
    assert len(runs) == 2 and all(info["registered"] for info in runs.values())
    assert all(hooks.acted(info) for info in runs.values())
    assert registry_files(agent) == []
    agent.stop()  # SIGKILL while idle
    count = len(agent.history())
    agent.start()
    assert registry_files(agent) == []
    assert len(agent.history()) == count  # nothing to recover, nothing killed
    assert len(hooks.started()) == 2


# --- (4) a record whose pid now belongs to someone else --------------------------------------


def _record(pid: int, start_time: int | None, **kw) -> str:
    doc = {"pid": pid, "pgid": pid, "start_time": start_time, "boot_id": _boot_id(),
           "argv": ["/usr/local/bin/reload-game"], "kind": "reload", "plugin": "greeter",
           "version": "1.1.0", "token": "00" * 16, "agent_pid": 99999,
           "started_at": "2026-01-01T00:00:00.000000Z", **kw}
    return json.dumps(doc)


def test_a_reused_pid_is_never_signalled(make_agent, build_plugin, hooks, tmp_path) -> None:
    agent = command_node(make_agent, build_plugin, hooks, tmp_path)
    agent.stop()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        real = proc_start_time(stranger.pid)
        gone = subprocess.Popen(["true"])
        gone.wait()
        directory = agent.data_dir / "hooks"
        directory.mkdir(exist_ok=True)
        (directory / f"{stranger.pid}.json").write_text(_record(stranger.pid, real - 1))
        (directory / "rebooted.json").write_text(_record(stranger.pid, real,
                                                         boot_id="another-boot"))
        (directory / f"{gone.pid}.json").write_text(_record(gone.pid, 12345))
        (directory / "torn.json").write_text('{"pid": 12')
        (directory / ".7.json.tmp-0a0b0c0d").write_text("{}")
        agent.start()
        assert stranger.poll() is None  # not killed, not even SIGTERMed
        assert registry_files(agent) == []
        recs = {r["record_file"]: r for r in agent.history() if "record_file" in r}
        reused = recs[f"{stranger.pid}.json"]
        assert reused["result"] == "pid_reused" and "another process" in reused["reason"]
        assert "signals" not in reused and reused["hook"]["pid"] == stranger.pid
        assert recs["rebooted.json"]["result"] == "hook_gone"
        assert "rebooted" in recs["rebooted.json"]["reason"]
        assert recs[f"{gone.pid}.json"]["result"] == "hook_gone"
        torn = [json.loads(line) for line in
                (agent.data_dir / "agent-history.jsonl").read_text().splitlines()]
        assert [r["result"] for r in torn if r.get("record_file") == "torn.json"] == \
            ["unreadable"]
        assert not any(r.get("result") == "killed_hook" for r in agent.history())
        assert agent.client().activate("greeter", "1.1.0")["result"] == "activated"
    finally:
        stranger.kill()
        stranger.wait(10)


# --- the hook itself exited, its processes did not --------------------------------------------


def _orphaned_group(tmp_path: Path, token: str) -> tuple[int, int]:
    """A group whose leader has exited (and been reaped) while its child still runs."""
    pid_file = tmp_path / f"child-{token[:4]}"
    code = ("import subprocess, sys, pathlib; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"pathlib.Path({str(pid_file)!r}).write_text(str(c.pid))")
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                              env={**os.environ, HOOK_ID_ENV: token})
    leader.wait(30)
    return leader.pid, int(pid_file.read_text())


def test_the_processes_of_an_exited_hook_are_stopped_if_they_carry_its_id(tmp_path) -> None:
    directory = tmp_path / "hooks"
    directory.mkdir()
    ours, theirs = "ab" * 16, "cd" * 16
    leader, child = _orphaned_group(tmp_path, ours)
    other_leader, other_child = _orphaned_group(tmp_path, theirs)
    try:
        (directory / f"{leader}.json").write_text(_record(leader, 1, token=ours))
        # twin: a group alive under that pgid whose processes do not carry the record's id
        (directory / f"{other_leader}.json").write_text(_record(other_leader, 1, token=ours))
        found = {f.path.name: f for f in stop_leftover_hooks(directory, grace=0.5)}
        assert found[f"{leader}.json"].result == "killed_hook"
        assert found[f"{leader}.json"].exited and not alive(child)
        assert found[f"{other_leader}.json"].result == "hook_gone" and alive(other_child)
    finally:
        for pid in (child, other_child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
