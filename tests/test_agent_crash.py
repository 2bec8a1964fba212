"""Crash safety: the agent is killed (SIGKILL, via HOTRELEASE_AGENT_CRASH_AT) at each named
point, restarted, and must run a complete verified version with `current` and the recorded
state in agreement and no leftovers. A second kill during recovery must also end well."""

from __future__ import annotations

import signal

import pytest
from conftest import hosted_agent

from hotrelease.errors import UnreachableError

CRASH = "HOTRELEASE_AGENT_CRASH_AT"


@pytest.fixture
def node(make_agent, build_plugin, tmp_path):
    agent = hosted_agent(make_agent)
    client = agent.client()
    agent.releases = {v: build_plugin(v) for v in ("1.0.0", "1.1.0")}
    agent.releases["1.2.0"] = build_plugin("1.2.0", out=tmp_path / "broken",
                                           env={"GREETER_BROKEN": "1"})
    client.upload(agent.releases["1.0.0"].manifest)
    client.activate("greeter", "1.0.0")
    return agent


def crash_during(agent, point: str, action) -> None:
    agent.stop()
    agent.start(env={CRASH: point})
    with pytest.raises(UnreachableError):
        action(agent.client())
    assert agent.wait_exit() == -signal.SIGKILL
    agent.proc = None


def assert_clean(agent, version: str) -> None:
    pdir = agent.data_dir / "plugins" / "greeter"
    state = agent.client().plugin("greeter")
    assert state["current"] == state["current_link"] == version
    assert not (pdir / "journal.json").exists()
    assert [p.name for p in pdir.iterdir() if ".tmp-" in p.name] == []
    assert list((agent.data_dir / "tmp").iterdir()) == []
    release = agent.data_dir / "releases" / "greeter" / version
    assert (pdir / "current").resolve() == release.resolve()
    assert (release / "manifest.json").is_file() and (release / "files" / "plugin.py").is_file()
    assert agent.host.health()["version"] == version  # the host runs what the agent says


@pytest.mark.parametrize("point", ["upload.receiving", "upload.verified", "upload.extracting",
                                   "upload.extracted"])
def test_kill_during_upload(node, point) -> None:
    release = node.releases["1.1.0"]
    crash_during(node, point, lambda c: c.upload(release.manifest))
    node.start()
    assert_clean(node, "1.0.0")
    assert node.client().plugin("greeter")["stored"] == ["1.0.0"]
    # twin: the same upload now goes through
    assert node.client().upload(release.manifest)["status"] == "stored"


@pytest.mark.parametrize("point,target,expected", [
    ("switch.journal", "1.1.0", "1.0.0"),
    ("switch.temp_symlink", "1.1.0", "1.0.0"),
    ("switch.swapped", "1.1.0", "1.0.0"),
    ("activate.health", "1.1.0", "1.0.0"),
    ("activate.rolling_back", "1.2.0", "1.0.0"),
    ("activate.committed", "1.1.0", "1.1.0"),
])
def test_kill_during_activation(node, point, target, expected) -> None:
    node.client().upload(node.releases[target].manifest)
    crash_during(node, point, lambda c: c.activate("greeter", target))
    node.start()
    assert_clean(node, expected)
    record = node.history()[-1]
    assert record["action"] == "recover" and record["version"] == expected
    assert record["result"] == ("finished" if expected == target else "undone")
    # twin: activating a healthy version works after recovery
    if expected != "1.1.0":
        node.client().upload(node.releases["1.1.0"].manifest)
        assert node.client().activate("greeter", "1.1.0")["result"] == "activated"
        assert_clean(node, "1.1.0")


def test_kill_during_manual_rollback(node) -> None:
    client = node.client()
    client.upload(node.releases["1.1.0"].manifest)
    client.activate("greeter", "1.1.0")
    crash_during(node, "switch.swapped", lambda c: c.rollback("greeter"))
    node.start()
    assert_clean(node, "1.1.0")
    assert node.client().rollback("greeter")["version"] == "1.0.0"  # twin
    assert_clean(node, "1.0.0")


def test_second_kill_during_recovery(node) -> None:
    node.client().upload(node.releases["1.1.0"].manifest)
    crash_during(node, "activate.health", lambda c: c.activate("greeter", "1.1.0"))
    node.start(env={CRASH: "recovery.swapped"}, wait=False)
    assert node.wait_exit() == -signal.SIGKILL
    node.proc = None
    assert (node.data_dir / "plugins" / "greeter" / "journal.json").exists()
    node.start()
    assert_clean(node, "1.0.0")
    assert node.client().activate("greeter", "1.1.0")["result"] == "activated"


def test_one_agent_per_data_dir(make_agent) -> None:
    import subprocess
    import sys

    agent = make_agent()
    second = subprocess.run([sys.executable, "-m", "hotrelease", "agent", "serve", "--config",
                             str(agent.config), "--port", "1"], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2 and "another agent" in second.stderr
    assert agent.client().health()["ok"] is True  # the first one is unaffected
