"""Staged publish against a fleet of real agents (separate processes on loopback), each
managing a real Python plugin host: canary, approvals, waves, abort, resume, windows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import AGENT_TOKEN, NOW, TEST_NOW, hosted_agent, iso, wait_until

from hotrelease.errors import (
    EXIT_ABORTED,
    EXIT_NOT_NOW,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
)

ALWAYS_OPEN = """
[[windows]]
name = "always"
days = ["mon-sun"]
start = "00:00"
duration = "1d"
timezone = "UTC"
"""


class Fleet:
    def __init__(self, repo, agents, cli):
        self.repo, self.agents, self.cli = repo, agents, cli
        self.by_name = {f"node-{i}": a for i, a in enumerate(agents)}
        self.env = {"HOTRELEASE_AGENT_TOKEN": AGENT_TOKEN}

    def configure(self, rollout: str = "", extra: str = ALWAYS_OPEN) -> None:
        """Append nodes, trust and rollout config to the plugin repo's hotrelease.toml."""
        config = self.repo.path / "hotrelease.toml"
        base = config.read_text().split("\n# --- test fleet ---")[0]
        nodes = "".join(f'\n[[nodes]]\nname = "{n}"\nurl = "{a.url}"\n'
                        for n, a in self.by_name.items())
        keys = self.repo.path.parent / "keys"
        config.write_text(f"{base}\n# --- test fleet ---\n[trust]\nrelease_keys = "
                          f'["{keys / "release.pub"}"]\nsecurity_keys = '
                          f'["{keys / "security.pub"}"]\n{extra}\n{nodes}\n{rollout}\n')

    def run(self, *args, now: str = NOW, env=None):
        return self.cli(*args, "--now", now, cwd=self.repo.path,
                        env={**self.env, **(env or {})}, timeout=180)

    def versions(self) -> dict[str, str | None]:
        out = {}
        for name, agent in self.by_name.items():
            with agent.client() as client:
                out[name] = client.plugin("greeter").get("current")
        return out

    def start_publish(self, manifest: Path) -> subprocess.Popen:
        """`publish --all-stages` as a CI job runs it, in its own process group."""
        return subprocess.Popen([sys.executable, "-m", "hotrelease", "publish", manifest,
                                 "--all-stages", "--now", NOW], cwd=self.repo.path,
                                env={**os.environ, **self.env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def kill_publish_once_active(self, manifest: Path, node: str) -> None:
        """Start a publish and SIGKILL it as soon as `node` runs 1.0.0 (a CI job dying)."""
        proc = self.start_publish(manifest)
        try:
            wait_until(lambda: self.versions()[node] == "1.0.0", 60, f"{node} to activate")
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=10)

    def serving(self) -> dict[str, str | None]:
        return {n: a.host.health().get("version") for n, a in self.by_name.items()}


FAST = """
[rollout]
poll_interval = 0.1
retry_backoff = 0.05
retries = 1

[[rollout.scheduled]]
name = "canary"
nodes = 1
bake_seconds = 0.3

[[rollout.scheduled]]
name = "wave-1"
percent = 40
approval = true

[[rollout.scheduled]]
name = "all"
percent = 100
approval = true

[[rollout.urgent]]
name = "canary"
nodes = 1

[[rollout.urgent]]
name = "all"
percent = 100
"""

# No stage gates, and no class gates either (a first release counts as major).
NO_APPROVAL = FAST.replace("approval = true", "approval = false") + \
    "\n[policy]\napproval_classes = []\n"


@pytest.fixture
def fleet(make_agent, plugin_repo, make_key, cli):
    make_key("security")

    def make(n: int, rollout: str = FAST, extra: str = ALWAYS_OPEN, *,
             untrusting: int = 0, min_healthy: float = 0.2) -> Fleet:
        """`untrusting`: how many of the agents do not trust the security team's key."""
        trusted = [plugin_repo.path.parent / "keys" / "security.pub"]
        agents = [hosted_agent(make_agent, security_keys=[] if i < untrusting else trusted,
                               min_healthy=min_healthy)
                  for i in range(n)]
        f = Fleet(plugin_repo, agents, cli)
        f.configure(rollout, extra)
        plugin_repo.commit("fleet config")
        return f

    return make


def dry_plan(fleet: Fleet, manifest: Path) -> dict[str, list[str]]:
    result = fleet.run("publish", manifest, "--dry-run", "--json")
    assert result.code == EXIT_OK, result.stderr
    plan: dict[str, list[str]] = {}
    for row in json.loads(result.stdout)["nodes"]:
        plan.setdefault(row["stage"], []).append(row["node"])
    return plan


def test_five_nodes_canary_approval_waves(fleet, build_plugin):
    f = fleet(5)
    release = build_plugin("1.0.0")
    plan = dry_plan(f, release.manifest)
    assert [len(plan[s]) for s in ("canary", "wave-1", "all")] == [1, 1, 3]
    assert dry_plan(f, release.manifest) == plan, "a second process computes the same plan"

    first = f.run("publish", release.manifest, "--json")
    assert first.code == EXIT_OK, first.stderr
    assert json.loads(first.stdout)["next_stage"] == "wave-1"
    versions = f.versions()
    assert [n for n, v in versions.items() if v == "1.0.0"] == plan["canary"]
    assert f.serving()[plan["canary"][0]] == "1.0.0"

    gated = f.run("publish", release.manifest, "--stage", "wave-1")
    assert gated.code == EXIT_NOT_NOW and "needs an approval" in gated.not_now_line
    assert not gated.error_line, "not now is no error"
    assert f.versions() == versions, "a gated stage without approval changes nothing"

    approved = f.run("approve", release.manifest, "--stage", "wave-1", "--by", "alice",
                     "--json")
    assert approved.code == EXIT_OK, approved.stderr
    assert json.loads(approved.stdout)["nodes"] == plan["wave-1"]
    assert f.run("publish", release.manifest, "--stage", "wave-1").code == EXIT_OK
    assert f.run("approve", release.manifest, "--stage", "all", "--by", "bob").code == EXIT_OK
    done = f.run("publish", release.manifest, "--all-stages", "--json")
    assert done.code == EXIT_OK, done.stderr
    assert json.loads(done.stdout)["complete"] is True
    assert set(f.versions().values()) == {"1.0.0"}
    assert set(f.serving().values()) == {"1.0.0"}

    status = f.run("status", release.manifest, "--json")
    assert status.code == EXIT_OK, status.stderr
    doc = json.loads(status.stdout)
    assert doc["stage_reached"] == "all"
    assert [s["approved_by"] for s in doc["stages"]] == [None, "alice", "bob"]
    approvals = [r for r in f.by_name[plan["wave-1"][0]].history() if r.get("action") ==
                 "approval"]
    assert approvals and approvals[0]["approval"]["approved_by"] == "alice"


def test_approval_for_another_digest_is_refused(fleet, build_plugin):
    f = fleet(3)
    release = build_plugin("1.0.0")
    assert f.run("publish", release.manifest).code == EXIT_OK
    assert f.run("approve", release.manifest, "--stage", "wave-1", "--by", "alice").code == 0
    before = f.versions()
    rebuilt = build_plugin("1.0.0", env={"SOURCE_DATE_EPOCH": "1700000999"})
    result = f.run("publish", rebuilt.manifest, "--stage", "wave-1")
    assert result.code == EXIT_NOT_NOW and "approval" in result.not_now_line
    assert f.versions() == before


def test_canary_health_failure_aborts_and_touches_nothing_else(fleet, build_plugin):
    f = fleet(4, NO_APPROVAL)
    good = build_plugin("1.0.0")
    assert f.run("publish", good.manifest, "--all-stages").code == EXIT_OK
    histories = {n: len(a.history()) for n, a in f.by_name.items()}
    broken = build_plugin("1.1.0", env={"GREETER_BROKEN": "1"})
    canary = dry_plan(f, broken.manifest)["canary"][0]
    result = f.run("publish", broken.manifest, "--all-stages")
    assert result.code == EXIT_ABORTED, result.stderr
    assert "canary" in result.error_line and canary in result.error_line
    assert set(f.versions().values()) == {"1.0.0"}
    assert set(f.serving().values()) == {"1.0.0"}
    for name, agent in f.by_name.items():
        if name != canary:
            assert len(agent.history()) == histories[name], f"{name} was touched"


def test_unreachable_node_counts_against_the_threshold(fleet, build_plugin):
    f = fleet(5, NO_APPROVAL)
    base = build_plugin("1.0.0")
    assert f.run("publish", base.manifest, "--all-stages").code == EXIT_OK
    f.repo.tag("v1.0.0")
    release = build_plugin("1.1.0")
    plan = dry_plan(f, release.manifest)
    victim = plan["wave-1"][0]
    f.by_name[victim].stop()
    result = f.run("publish", release.manifest, "--all-stages")
    assert result.code == EXIT_ABORTED
    assert victim in result.error_line and "unreachable" in result.error_line
    assert "reverted 1 node(s)" in result.error_line  # the canary (wave-1 is the victim)
    alive = {n: a for n, a in f.by_name.items() if n != victim}
    for name, agent in alive.items():
        with agent.client() as client:
            assert client.plugin("greeter")["current"] == "1.0.0", name
        assert agent.host.health()["version"] == "1.0.0"
    untouched = [n for n in alive if n in plan["all"]]
    for name in untouched:
        assert not any(r.get("version") == "1.1.0" for r in f.by_name[name].history())


def test_unreachable_node_within_threshold_lets_the_rollout_finish(fleet, build_plugin):
    tolerant = NO_APPROVAL.replace('name = "wave-1"\npercent = 40',
                                   'name = "wave-1"\npercent = 40\nfailure_threshold = 1')
    f = fleet(5, tolerant)
    release = build_plugin("1.0.0")
    victim = dry_plan(f, release.manifest)["wave-1"][0]
    f.by_name[victim].stop()
    result = f.run("publish", release.manifest, "--all-stages", "--json")
    assert result.code == EXIT_OK, result.stderr
    outcomes = {n["node"]: n["result"] for n in json.loads(result.stdout)["nodes"]}
    assert outcomes[victim] == "unreachable"
    assert sum(1 for r in outcomes.values() if r == "activated") == 4


def test_killed_publish_resumes_and_the_fleet_ends_consistent(fleet, build_plugin):
    slow = NO_APPROVAL.replace("bake_seconds = 0.3", "bake_seconds = 30")
    f = fleet(4, slow)
    release = build_plugin("1.0.0")
    canary = dry_plan(f, release.manifest)["canary"][0]
    f.kill_publish_once_active(release.manifest, canary)
    assert sum(v == "1.0.0" for v in f.versions().values()) == 1
    f.configure(NO_APPROVAL)  # a shorter bake for the re-run; same stages, same plan
    result = f.run("publish", release.manifest, "--all-stages", "--json")
    assert result.code == EXIT_OK, result.stderr
    outcomes = {n["node"]: n["result"] for n in json.loads(result.stdout)["nodes"]}
    assert outcomes.get(canary) in (None, "already")
    assert set(f.versions().values()) == {"1.0.0"}


# A two-hour window that opens ten hours from now, on whatever day that is.
OPENS = (TEST_NOW + timedelta(hours=10)).replace(second=0)
WINDOWS = f"""
[[windows]]
name = "tonight"
days = ["{OPENS.strftime('%a').lower()}"]
start = "{OPENS.strftime('%H:%M')}"
duration = "2h"
timezone = "UTC"
"""


def test_scheduled_release_outside_its_window_is_refused_with_the_next_window(
        fleet, build_plugin):
    f = fleet(2, NO_APPROVAL, extra=WINDOWS)
    release = build_plugin("1.0.0")
    result = f.run("publish", release.manifest)
    assert result.code == EXIT_NOT_NOW
    assert f"next window opens at {iso(OPENS)}" in result.not_now_line
    assert set(f.versions().values()) == {None}
    inside = f.run("publish", release.manifest, "--all-stages",
                   now=iso(OPENS + timedelta(minutes=30)))
    assert inside.code == EXIT_OK, inside.stderr
    assert set(f.versions().values()) == {"1.0.0"}


def notify_hook(log: Path) -> str:
    """A [notify] command that appends one line per notification to `log`."""
    return (f'\n[notify]\ncommand = ["python3", "-c", "import sys; open(sys.argv[1], \'a\')'
            f'.write(\'urgent\\\\n\')", "{log}"]\ntimeout = 10\n')


def _security_label(f, release, version):
    keys = f.repo.path.parent / "keys"
    result = f.cli("label", "security", "--manifest", release.manifest, "--advisory",
                   "CVE-2026-1234", "--severity", "high", "--key", keys / "security.key",
                   "--now", NOW, cwd=f.repo.path)
    assert result.code == EXIT_OK, result.stderr


@pytest.mark.parametrize("break_glass", [True, False])
def test_signed_security_patch_during_a_freeze_needs_break_glass(fleet, build_plugin,
                                                                break_glass):
    glass = "true" if break_glass else "false"
    today = TEST_NOW.date()
    freeze = ALWAYS_OPEN + (f'\n[[freezes]]\nname = "launch"\nstart = {today - timedelta(4)}\n'
                            f'end = {today + timedelta(6)}\ntimezone = "UTC"\n'
                            f'break_glass = {glass}\n')
    f = fleet(3, NO_APPROVAL, extra=freeze)
    base = build_plugin("1.0.0")
    f.repo.tag("v1.0.0")
    # The base rollout happened before the freeze.
    assert f.run("publish", base.manifest, "--all-stages",
                 now=iso(TEST_NOW - timedelta(days=14))).code == EXIT_OK
    patch = build_plugin("1.0.1")
    feature_like = f.run("publish", patch.manifest)
    assert feature_like.code == EXIT_NOT_NOW, "unlabelled patch waits for the freeze to end"
    _security_label(f, patch, "1.0.1")
    result = f.run("publish", patch.manifest, "--all-stages", "--json")
    if break_glass:
        assert result.code == EXIT_OK, result.stderr
        assert json.loads(result.stdout)["lane"] == "urgent"
        assert set(f.versions().values()) == {"1.0.1"}
    else:
        assert result.code in (EXIT_NOT_NOW, EXIT_REFUSED)
        assert set(f.versions().values()) == {"1.0.0"}


def test_dry_run_changes_nothing(fleet, build_plugin):
    f = fleet(2, NO_APPROVAL)
    release = build_plugin("1.0.0")
    snapshots = {n: a.snapshot() for n, a in f.by_name.items()}
    result = f.run("publish", release.manifest, "--all-stages", "--dry-run")
    assert result.code == EXIT_OK, result.stderr
    assert "upload + activate" in result.stdout
    assert {n: a.snapshot() for n, a in f.by_name.items()} == snapshots


def test_plan_digest_mismatch_is_refused(fleet, build_plugin):
    f = fleet(2, NO_APPROVAL)
    release = build_plugin("1.0.0")
    plan = f.run("plan", "--manifest", release.manifest, "--json")
    assert plan.code == EXIT_OK, plan.stderr
    digest = json.loads(plan.stdout)["plan_digest"]
    wrong = f.run("publish", release.manifest, "--plan", "sha256:" + "0" * 64)
    assert wrong.code == EXIT_REFUSED and "plan changed" in wrong.error_line
    right = f.run("publish", release.manifest, "--all-stages", "--plan", digest)
    assert right.code == EXIT_OK, right.stderr


def test_rollback_command_returns_the_fleet(fleet, build_plugin):
    f = fleet(3, NO_APPROVAL)
    first = build_plugin("1.0.0")
    assert f.run("publish", first.manifest, "--all-stages").code == EXIT_OK
    f.repo.tag("v1.0.0")
    second = build_plugin("1.1.0")
    assert f.run("publish", second.manifest, "--all-stages").code == EXIT_OK
    assert set(f.versions().values()) == {"1.1.0"}
    result = f.run("rollback", second.manifest, "--json")
    assert result.code == EXIT_OK, result.stderr
    assert set(f.versions().values()) == {"1.0.0"}
    assert set(f.serving().values()) == {"1.0.0"}


def test_publish_is_refused_while_another_rollout_is_half_done(fleet, build_plugin):
    f = fleet(3, NO_APPROVAL)
    v1 = build_plugin("1.0.0")
    assert f.run("publish", v1.manifest, "--all-stages").code == EXIT_OK
    f.repo.tag("v1.0.0")
    v2 = build_plugin("1.1.0")
    assert f.run("publish", v2.manifest).code == EXIT_OK  # without --all-stages: canary only
    states = f.versions()
    assert sorted(states.values()) == ["1.0.0", "1.0.0", "1.1.0"]
    v3 = build_plugin("1.2.0")
    result = f.run("publish", v3.manifest, "--all-stages")
    assert result.code == EXIT_REFUSED and "another rollout" in result.error_line
    assert f.versions() == states, "no node may end up on a third version"
    # Passing twin: finishing the running rollout first lets the newer one go.
    assert f.run("publish", v2.manifest, "--all-stages").code == EXIT_OK
    assert f.run("publish", v3.manifest, "--all-stages").code == EXIT_OK
    assert set(f.versions().values()) == {"1.2.0"}


def test_baseline_can_come_from_the_fleet(fleet, build_plugin):
    """With policy.baseline = "fleet", the version the agents run is the baseline: no git
    tag says 1.0.0 was released, yet 1.1.0 is a feature update, not a first release."""
    f = fleet(2, NO_APPROVAL.replace("approval_classes = []",
                                     'approval_classes = []\nbaseline = "fleet"'))
    first = build_plugin("1.0.0")
    assert f.run("publish", first.manifest, "--all-stages").code == EXIT_OK
    second = build_plugin("1.1.0")
    plan = f.run("plan", "--manifest", second.manifest, "--json")
    assert plan.code == EXIT_OK, plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["class"] == "feature" and doc["baseline"] == "1.0.0"
    assert doc["baseline_source"].startswith("fleet (node-0, node-1 run 1.0.0")
    result = f.run("publish", second.manifest, "--all-stages", "--plan", doc["plan_digest"])
    assert result.code == EXIT_OK, result.stderr
    assert set(f.versions().values()) == {"1.1.0"}


def test_urgent_rollout_notifies_ops_once(fleet, build_plugin, tmp_path):
    log = tmp_path / "notified.log"
    hook = notify_hook(log)
    f = fleet(3, NO_APPROVAL, extra=ALWAYS_OPEN + hook)
    base = build_plugin("1.0.0")
    assert f.run("publish", base.manifest, "--all-stages").code == EXIT_OK
    assert not log.exists(), "a scheduled release notifies nobody"
    f.repo.tag("v1.0.0")
    patch = build_plugin("1.0.1")
    _security_label(f, patch, "1.0.1")
    first = f.run("publish", patch.manifest, "--json")  # the canary stage
    assert first.code == EXIT_OK, first.stderr
    assert json.loads(first.stdout)["lane"] == "urgent"
    assert log.read_text() == "urgent\n"
    rest = f.run("publish", patch.manifest, "--all-stages")
    assert rest.code == EXIT_OK, rest.stderr
    assert log.read_text() == "urgent\n", "ops hear about one urgent rollout once"
    assert set(f.versions().values()) == {"1.0.1"}
    # The label reached every agent: none will go back below the fixed version.
    for agent in f.agents:
        with agent.client() as client:
            assert client.plugin("greeter")["security_floor"] == "1.0.1"
    back = f.run("rollback", patch.manifest, "--json")
    assert back.code == EXIT_REFUSED and "security floor" in back.stdout
    assert {n["result"] for n in json.loads(back.stdout)["nodes"]} == {"failed"}
    assert set(f.versions().values()) == {"1.0.1"}


def test_health_neither_pass_nor_fail_pauses_for_a_human(fleet, build_plugin):
    f = fleet(2, NO_APPROVAL)
    release = build_plugin("1.0.0")
    assert f.run("publish", release.manifest, "--all-stages").code == EXIT_OK
    canary = dry_plan(f, release.manifest)["canary"][0]
    agent = f.by_name[canary]
    # The node's agent lost its health verdict (as after a host it could not probe).
    agent.stop()
    state_file = agent.data_dir / "plugins" / "greeter" / "state.json"
    state = json.loads(state_file.read_text())
    state["health"] = {"ok": None, "status": "unknown", "detail": "not probed"}
    state_file.write_text(json.dumps(state))
    agent.start()
    result = f.run("publish", release.manifest, "--stage", "canary")
    assert result.code == EXIT_NOT_NOW
    assert "neither pass nor fail" in result.not_now_line and canary in result.not_now_line
    assert set(f.versions().values()) == {"1.0.0"}, "a pause promotes nothing, reverts nothing"


def test_an_approval_every_agent_refuses_is_exit_1_and_no_answer_is_exit_5(fleet,
                                                                         build_plugin):
    f = fleet(2)
    release = build_plugin("1.0.0")
    assert f.run("publish", release.manifest).code == EXIT_OK  # the canary
    expired = f.run("approve", release.manifest, "--stage", "all", "--by", "alice",
                    "--valid-hours", "1", now=iso(TEST_NOW - timedelta(hours=2)))
    assert expired.code == EXIT_REFUSED, expired.stderr
    assert "refused by every node" in expired.error_line and "expired" in expired.error_line
    records = [r for a in f.agents for r in a.history() if r.get("action") == "approval"]
    assert len(records) == 2 and {r["result"] for r in records} == {"refused"}, records
    for agent in f.agents:
        agent.stop()
    gone = f.run("approve", release.manifest, "--stage", "all", "--by", "alice")
    assert gone.code == EXIT_UNREACHABLE, gone.stderr
    assert "could not be recorded on any node" in gone.error_line


def test_a_security_label_an_agent_refuses_fails_the_publish_and_changes_nothing(
        fleet, build_plugin, tmp_path):
    log = tmp_path / "notified.log"
    hook = notify_hook(log)
    f = fleet(3, NO_APPROVAL, extra=ALWAYS_OPEN + hook, untrusting=1)
    base = build_plugin("1.0.0")
    assert f.run("publish", base.manifest, "--all-stages").code == EXIT_OK
    f.repo.tag("v1.0.0")
    patch = build_plugin("1.0.1")
    _security_label(f, patch, "1.0.1")
    before = f.versions()
    result = f.run("publish", patch.manifest, "--all-stages")
    assert result.code == EXIT_REFUSED, result.stderr
    assert "security label was refused by 1 node(s)" in result.error_line
    assert "node-0" in result.error_line and "security_keys" in result.error_line
    assert f.versions() == before == {n: "1.0.0" for n in f.by_name}
    assert not log.exists(), "ops are not paged for a rollout that did not start"


def test_an_approval_that_expired_since_it_was_recorded_does_not_open_a_stage(fleet,
                                                                             build_plugin):
    from datetime import UTC, datetime

    f = fleet(3)
    release = build_plugin("1.0.0")
    assert f.run("publish", release.manifest).code == EXIT_OK  # the canary
    now = datetime.now(UTC).replace(microsecond=0)
    # Valid for ten more minutes: every agent records it.
    approved = f.run("approve", release.manifest, "--stage", "wave-1", "--by", "alice",
                     "--valid-hours", "1", now=iso(now - timedelta(minutes=50)))
    assert approved.code == EXIT_OK, approved.stderr
    before = f.versions()
    late = f.run("publish", release.manifest, "--stage", "wave-1",
                 now=iso(now + timedelta(hours=2)))
    assert late.code == EXIT_NOT_NOW, late.stderr
    assert "expired at" in late.not_now_line and "needs an approval" in late.not_now_line
    assert f.versions() == before, "an expired approval opens nothing"
    in_time = f.run("publish", release.manifest, "--stage", "wave-1", now=iso(now))
    assert in_time.code == EXIT_OK, in_time.stderr


def test_a_rerun_right_after_a_killed_publish_waits_out_the_canary_bake(fleet, build_plugin):
    from datetime import datetime

    bake = 4.0
    f = fleet(3, NO_APPROVAL.replace("bake_seconds = 0.3", f"bake_seconds = {bake}"))
    release = build_plugin("1.0.0")
    plan = dry_plan(f, release.manifest)
    canary = plan["canary"][0]
    f.kill_publish_once_active(release.manifest, canary)
    result = f.run("publish", release.manifest, "--all-stages")
    assert result.code == EXIT_OK, result.stderr
    assert set(f.versions().values()) == {"1.0.0"}

    def activated(node: str) -> datetime:
        with f.by_name[node].client() as client:
            since = client.plugin("greeter")["activated_at"]
        return datetime.fromisoformat(since.replace("Z", "+00:00"))

    gap = (activated(plan["wave-1"][0]) - activated(canary)).total_seconds()
    assert gap >= bake, f"wave-1 started {gap:.2f}s after the canary; the bake is {bake}s"


def test_a_node_still_finishing_an_activation_is_waited_for_not_failed(fleet,
                                                                        build_plugin) -> None:
    """A retry right after a killed job meets the activation that job asked for: the agent
    says so in its state, and the publisher waits for it and judges its result."""
    import threading

    f = fleet(2, NO_APPROVAL, min_healthy=3.0)
    release = build_plugin("1.0.0")
    canary = dry_plan(f, release.manifest)["canary"][0]
    agent = f.by_name[canary]
    with agent.client() as client:
        client.upload(release.manifest, release.signature, release.bundle)
    answers: list[dict] = []

    def killed_runs_activation() -> None:
        with agent.client() as client:
            answers.append(client.activate("greeter", "1.0.0", stage="canary"))

    thread = threading.Thread(target=killed_runs_activation)
    thread.start()
    try:
        def busy():
            with agent.client() as client:
                return client.plugin("greeter").get("in_progress")
        progress = wait_until(busy, 20, "the activation to be under way")
        assert progress["version"] == "1.0.0" and progress["action"] == "activate"
        result = f.run("publish", release.manifest, "--all-stages", "--json")
    finally:
        thread.join(timeout=60)
    assert result.code == EXIT_OK, result.stderr
    outcomes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    assert outcomes[canary]["result"] == "activated"
    assert "earlier run" in outcomes[canary]["detail"]
    assert answers and answers[0]["result"] == "activated"
    assert set(f.versions().values()) == {"1.0.0"}
    activations = [r for r in agent.history()
                   if r.get("action") == "activate" and r.get("result") == "activated"]
    assert len(activations) == 1, "activated exactly once"
    with agent.client() as client:
        assert client.plugin("greeter")["in_progress"] is None


def test_an_abort_reverts_every_node_on_the_release_whichever_run_moved_it(fleet,
                                                                         build_plugin):
    f = fleet(3, NO_APPROVAL)
    base = build_plugin("1.0.0")
    assert f.run("publish", base.manifest, "--all-stages").code == EXIT_OK
    f.repo.tag("v1.0.0")
    release = build_plugin("1.1.0")
    plan = dry_plan(f, release.manifest)
    canary, wave = plan["canary"][0], plan["wave-1"][0]
    # An earlier, killed run had moved the canary and the wave-1 node ...
    for node in (canary, wave):
        with f.by_name[node].client() as client:
            client.upload(release.manifest, release.signature, release.bundle)
            assert client.activate("greeter", "1.1.0")["result"] == "activated"
    # ... and now the canary's agent is gone: its stage fails again and the rollout aborts.
    f.by_name[canary].stop()
    result = f.run("publish", release.manifest, "--stage", "canary")
    assert result.code == EXIT_ABORTED, result.stderr
    assert "reverted 1 node(s)" in result.error_line and "STILL ON" not in result.error_line
    with f.by_name[wave].client() as client:
        assert client.plugin("greeter")["current"] == "1.0.0", "the wave-1 node went back"
    assert f.by_name[wave].host.health()["version"] == "1.0.0"


@pytest.mark.parametrize("change", ["a node added", "a share changed", "a bake changed"])
def test_the_plan_digest_covers_the_plan_itself(fleet, build_plugin, change):
    f = fleet(3, NO_APPROVAL)
    release = build_plugin("1.0.0")
    plan = f.run("plan", "--manifest", release.manifest, "--json")
    assert plan.code == EXIT_OK, plan.stderr
    digest = json.loads(plan.stdout)["plan_digest"]
    config = f.repo.path / "hotrelease.toml"
    text = config.read_text()
    if change == "a node added":
        text += '\n[[nodes]]\nname = "node-late"\nurl = "http://127.0.0.1:9"\n'
    elif change == "a share changed":
        text = text.replace("percent = 40", "percent = 25")
    else:
        text = text.replace("bake_seconds = 0.3", "bake_seconds = 600")
    config.write_text(text)
    f.repo.commit(change)
    before = f.versions()
    changed = f.run("publish", release.manifest, "--all-stages", "--plan", digest)
    assert changed.code == EXIT_REFUSED and "plan changed" in changed.error_line, change
    assert f.versions() == before
    again = json.loads(f.run("plan", "--manifest", release.manifest, "--json").stdout)
    assert again["plan_digest"] != digest


CHAOS = """
[rollout]
poll_interval = 0.1
retry_backoff = 0.05
retries = 2

[[rollout.scheduled]]
name = "canary"
nodes = 1
bake_seconds = 1.5

[[rollout.scheduled]]
name = "wave-1"
percent = 40
bake_seconds = 1.5

[[rollout.scheduled]]
name = "all"
percent = 100

[policy]
approval_classes = []
"""


@pytest.mark.slow
def test_chaos_the_publisher_killed_at_random_and_rerun_at_once(fleet, build_plugin) -> None:
    """A CI job killed at random moments and retried at once, round after round: the fleet
    ends on the release, every node activated exactly once, no rollback, every bake in
    full. Seeded: a failure names its seed and reproduces."""
    import random
    import time
    from datetime import datetime

    seed = 20261202
    rng = random.Random(seed)
    f = fleet(7, CHAOS)
    release = build_plugin("1.0.0")
    plan = dry_plan(f, release.manifest)
    kills = []
    for _ in range(8):
        proc = f.start_publish(release.manifest)
        delay = rng.uniform(0.2, 2.5)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            kills.append(round(delay, 2))
            continue
        assert proc.returncode == EXIT_OK, f"seed {seed}: a run exited {proc.returncode}"
    assert len(kills) >= 4, f"seed {seed}: too few kills to mean anything: {kills}"
    deadline = time.monotonic() + 120
    final = f.run("publish", release.manifest, "--all-stages", "--json")
    assert time.monotonic() < deadline
    assert final.code == EXIT_OK, f"seed {seed}, kills {kills}: {final.stderr}"
    assert set(f.versions().values()) == {"1.0.0"}

    activated: dict[str, datetime] = {}
    for name, agent in f.by_name.items():
        history = agent.history()
        ok = [r for r in history if r.get("action") == "activate"
              and r.get("result") == "activated"]
        assert len(ok) == 1, f"seed {seed}, kills {kills}: {name} activated {len(ok)} times"
        assert not [r for r in history if r.get("action") == "rollback"
                    or r.get("result") == "rolled_back"], f"seed {seed}: {name} rolled back"
        with agent.client() as client:
            since = client.plugin("greeter")["activated_at"]
        activated[name] = datetime.fromisoformat(since.replace("Z", "+00:00"))
    for before, after in (("canary", "wave-1"), ("wave-1", "all")):
        baked = (min(activated[n] for n in plan[after])
                 - max(activated[n] for n in plan[before])).total_seconds()
        assert baked >= 1.5, f"seed {seed}, kills {kills}: {before} baked {baked:.2f}s"
