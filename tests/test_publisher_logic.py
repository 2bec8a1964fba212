"""Publisher logic, fast: stage order, resume, thresholds, retries, abort and revert, bake,
approvals, supersede refusal, `stage=`, all against in-memory agents (tests/fakeagent.py)
with a fake clock. The end-to-end counterpart with real agent processes is test_publish.py.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from fakeagent import PLUGIN, FakeAgent, FakeFleet, FakeRelease

from hotrelease.config.inventory import StageSpec
from hotrelease.errors import (
    AbortedError,
    AgentError,
    AgentFailure,
    NotNowError,
    PolicyError,
    UnreachableError,
)
from hotrelease.rollout.plan import StagePlan

CANARY_BAKE = 60.0
WAVE_BAKE = 30.0
BASE = "1.0.0"
NEW = "1.1.0"


def specs(**changes: dict) -> list[StageSpec]:
    """canary (1 node), wave-1 (to 50%), all; `wave_1={"failure_threshold": 1}` etc."""
    stages = [StageSpec("canary", nodes=1, bake_seconds=CANARY_BAKE),
              StageSpec("wave-1", percent=50, bake_seconds=WAVE_BAKE),
              StageSpec("all", percent=100)]
    return [dataclasses.replace(s, **changes.get(s.name.replace("-", "_"), {}))
            for s in stages]


@pytest.fixture
def fleet(tmp_path) -> FakeFleet:
    return FakeFleet(tmp_path, n=6)


@pytest.fixture
def base(fleet) -> FakeRelease:
    """Every node runs 1.0.0, installed by an earlier rollout."""
    release = fleet.release(BASE)
    fleet.install(release)
    return release


@pytest.fixture
def new(fleet) -> FakeRelease:
    return fleet.release(NEW)


def stage_nodes(plans: list[StagePlan]) -> dict[str, list[str]]:
    return {p.name: list(p.nodes) for p in plans}


def assert_nothing_changed(fleet: FakeFleet, before: dict[str, str | None]) -> None:
    assert fleet.versions() == before
    assert fleet.calls("upload", "activate", "rollback") == []


# --- the fake answers like the real client --------------------------------------------------


def test_fake_answers_and_errors_are_the_real_clients(fleet, base, new):
    agent = fleet.agents["node-0"]
    with pytest.raises(AgentError) as unknown:
        agent.plugin("no-such-plugin")
    assert (unknown.value.code, unknown.value.status) == ("unknown_plugin", 404)
    with pytest.raises(AgentError) as not_stored:
        agent.activate(PLUGIN, NEW)
    assert (not_stored.value.code, not_stored.value.status) == ("not_stored", 404)
    assert agent.upload(*new.paths)["status"] == "stored"
    assert agent.upload(*new.paths)["status"] == "unchanged"
    assert agent.activate(PLUGIN, NEW)["result"] == "activated"
    assert agent.activate(PLUGIN, NEW)["result"] == "unchanged"
    info = agent.plugin(PLUGIN)
    assert (info["current"], info["previous"], info["state"], info["health"]["status"]) == \
        (NEW, BASE, "active", "pass")
    back = agent.rollback(PLUGIN)
    assert (back["result"], back["current"]) == ("activated", BASE)
    between = fleet.release("1.0.5")
    agent.upload(*between.paths)
    with pytest.raises(PolicyError) as downgrade:  # 1.1.0 ran here: lower only by rollback
        agent.activate(PLUGIN, "1.0.5")
    assert downgrade.value.code == "downgrade"
    agent.unreachable_for(1)
    with pytest.raises(UnreachableError):
        agent.plugin(PLUGIN)
    assert agent.plugin(PLUGIN)["current"] == BASE
    broken = fleet.release("1.2.0")
    agent.set_verdict("1.2.0", "fail")
    agent.upload(*broken.paths)
    answer = agent.activate(PLUGIN, "1.2.0")
    assert (answer["result"], answer["current"]) == ("rolled_back", BASE)
    assert agent.plugin(PLUGIN)["state"] == "rolled_back"
    last = agent.history(PLUGIN)[-1]
    assert (last["action"], last["result"], last["version"]) == \
        ("activate", "rolled_back", "1.2.0")


# --- order, resume --------------------------------------------------------------------------


def test_all_stages_run_canary_then_waves_in_plan_order(fleet, base, new):
    plans = fleet.plans(new, specs())
    stage_of = {n: p.name for p in plans for n in p.nodes}
    assert [len(p.nodes) for p in plans] == [1, 2, 3]

    report = fleet.publisher(new).publish(plans, all_stages=True)

    assert report.stages_run == ["canary", "wave-1", "all"]
    assert (report.complete, report.next_stage) == (True, None)
    assert fleet.versions() == {n: NEW for n in fleet.agents}
    assert {o.node: o.result for o in report.outcomes} == {n: "activated" for n in stage_of}
    activations = [(node, args[2]["stage"]) for node, method, args in fleet.log
                   if method == "activate"]
    assert [node for node, _ in activations] == \
        sorted((n for n, _ in activations), key=lambda n: [p.name for p in plans]
               .index(stage_of[n])), "a later stage started before an earlier one finished"
    assert all(stage == stage_of[node] for node, stage in activations)
    assert sorted(n for n, _ in activations) == sorted(fleet.agents), "each node once"
    calls = fleet.calls("upload", "activate")
    for plan in plans:
        uploads = [i for i, (n, m) in enumerate(calls) if m == "upload" and n in plan.nodes]
        activates = [i for i, (n, m) in enumerate(calls) if m == "activate" and n in plan.nodes]
        assert max(uploads) < min(activates), f"{plan.name}: activated before all uploads"
    assert fleet.clock() >= CANARY_BAKE + WAVE_BAKE, "both bakes waited (on the fake clock)"


def test_without_all_stages_each_run_does_the_next_stage(fleet, base, new):
    plans = fleet.plans(new, specs())
    nodes = stage_nodes(plans)

    first = fleet.publisher(new).publish(plans)
    assert first.stages_run == ["canary"]
    assert (first.complete, first.next_stage) == (False, "wave-1")
    assert [n for n, v in fleet.versions().items() if v == NEW] == nodes["canary"]

    fleet.forget_calls()
    second = fleet.publisher(new).publish(plans)
    assert second.stages_run == ["wave-1"]
    assert second.next_stage == "all"
    assert fleet.touched() == set(nodes["wave-1"]), "the canary is not activated again"
    assert sorted(n for n, v in fleet.versions().items() if v == NEW) == \
        sorted(nodes["canary"] + nodes["wave-1"])


def test_resumed_run_skips_nodes_already_on_the_release(fleet, base, new):
    plans = fleet.plans(new, specs())
    nodes = stage_nodes(plans)
    done_before = nodes["canary"] + nodes["wave-1"][:1]  # the killed run got this far
    fleet.install(new, done_before)

    report = fleet.publisher(new).publish(plans, all_stages=True)

    results = {o.node: o.result for o in report.outcomes}
    assert results[nodes["wave-1"][0]] == "already"
    assert results[nodes["wave-1"][1]] == "activated"
    assert fleet.touched("upload", "activate") == set(fleet.agents) - set(done_before)
    assert fleet.versions() == {n: NEW for n in fleet.agents}
    assert report.complete
    assert report.stages_run == ["wave-1", "all"], "the finished canary stage is skipped"


# --- unreachable nodes, retries, refusals -----------------------------------------------


def test_unreachable_node_with_threshold_0_aborts_and_reverts(fleet, base, new):
    plans = fleet.plans(new, specs())
    nodes = stage_nodes(plans)
    victim, other = nodes["wave-1"]
    fleet.agents[victim].unreachable = True

    with pytest.raises(AbortedError) as err:
        fleet.publisher(new).publish(plans, all_stages=True)

    message = str(err.value)
    assert f"stage wave-1 failed on {victim}" in message
    assert "reverted 2 node(s)" in message
    assert fleet.touched("rollback") == {nodes["canary"][0], other}
    assert fleet.versions() == {n: BASE for n in fleet.agents}
    for node in nodes["all"]:
        assert set(fleet.agents[node].methods()) <= {"plugin"}, f"{node} was touched"


def test_unreachable_node_within_threshold_1_is_tolerated(fleet, base, new):
    plans = fleet.plans(new, specs(wave_1={"failure_threshold": 1}))
    nodes = stage_nodes(plans)
    victim = nodes["wave-1"][0]
    fleet.agents[victim].unreachable = True

    report = fleet.publisher(new).publish(plans, all_stages=True)

    assert report.stages_run == ["canary", "wave-1", "all"]
    assert {o.node: o.result for o in report.outcomes}[victim] == "unreachable"
    assert fleet.versions() == {n: (BASE if n == victim else NEW) for n in fleet.agents}
    assert report.complete, "a tolerated failure does not block later stages"
    assert fleet.touched("rollback") == set()
    retries = fleet.settings.retries
    assert fleet.agents[victim].methods().count("upload") == retries + 1
    assert "activate" not in fleet.agents[victim].methods()


def test_transient_unreachability_is_retried_with_backoff(fleet, base, new):
    plans = fleet.plans(new, specs(canary={"bake_seconds": 0}, wave_1={"bake_seconds": 0}))
    canary = plans[0].nodes[0]
    fleet.agents[canary].unreachable_for(2, "upload")
    settings = dataclasses.replace(fleet.settings, retries=3, retry_backoff=0.5)

    report = fleet.publisher(new, settings=settings).publish(plans, all_stages=True)

    assert report.complete
    assert fleet.versions() == {n: NEW for n in fleet.agents}
    assert fleet.agents[canary].methods().count("upload") == 3
    assert fleet.clock.sleeps == [0.5, 1.0], "exponential backoff, once per failed attempt"


@pytest.mark.parametrize("refusal", ["downgrade", "version_conflict"])
def test_refusal_is_not_retried_and_aborts(fleet, base, new, refusal):
    plans = fleet.plans(new, specs(canary={"bake_seconds": 0}, wave_1={"bake_seconds": 0}))
    nodes = stage_nodes(plans)
    victim = nodes["wave-1"][0]
    agent = fleet.agents[victim]
    if refusal == "downgrade":  # the node ran 1.2.0 once and was rolled back
        fleet.install(fleet.release("1.2.0"), [victim])
        agent.rollback(PLUGIN)
        method = "activate"
    else:  # another build of 1.1.0 is stored there
        agent.upload(*fleet.release(NEW, content=b"another build").paths)
        method = "upload"
    fleet.forget_calls()

    with pytest.raises(AbortedError) as err:
        fleet.publisher(new).publish(plans, all_stages=True)

    assert agent.methods().count(method) == 1, "a refusal is not asked again"
    assert fleet.clock.sleeps == [], "no backoff for an answer"
    assert f"failed on {victim}" in str(err.value) and refusal in str(err.value)
    assert fleet.versions() == {n: BASE for n in fleet.agents}


# --- abort and revert -------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 1])
def test_agent_rollback_aborts_and_reverts_exactly_the_nodes_on_the_release(
        fleet, base, new, threshold):
    plans = fleet.plans(new, specs(wave_1={"failure_threshold": threshold}))
    nodes = stage_nodes(plans)
    other, victim = nodes["wave-1"]
    fleet.agents[victim].set_verdict(NEW, "fail")

    with pytest.raises(AbortedError) as err:
        fleet.publisher(new).publish(plans, all_stages=True)

    message = str(err.value)
    assert f"stage wave-1 failed on {victim}" in message
    assert "reverted 2 node(s), 1 rolled back by their agent" in message
    assert sorted(fleet.calls("rollback")) == sorted(
        [(nodes["canary"][0], "rollback"), (other, "rollback")]), "each reverted once"
    assert fleet.versions() == {n: BASE for n in fleet.agents}
    for node in nodes["all"]:
        assert set(fleet.agents[node].methods()) <= {"plugin"}, f"{node} was touched"
    assert fleet.agents[victim].records()[-1]["result"] == "rolled_back"


def test_canary_failure_changes_no_other_node(fleet, base, new):
    plans = fleet.plans(new, specs())
    canary = plans[0].nodes[0]
    fleet.agents[canary].set_verdict(NEW, "fail")

    with pytest.raises(AbortedError) as err:
        fleet.publisher(new).publish(plans, all_stages=True)

    assert f"stage canary failed on {canary}" in str(err.value)
    assert "reverted 0 node(s), 1 rolled back by their agent" in str(err.value)
    assert fleet.touched() == {canary}
    assert fleet.calls("rollback") == [], "the agent rolled back by itself"
    assert fleet.versions() == {n: BASE for n in fleet.agents}


def test_abort_counts_only_the_nodes_actually_reverted(fleet, base, new):
    plans = fleet.plans(new, specs())
    nodes = stage_nodes(plans)
    canary = nodes["canary"][0]
    fleet.install(new, [canary])
    other, victim = nodes["wave-1"]
    fleet.agents[victim].set_verdict(NEW, "fail")
    fleet.agents[canary].refuse("rollback", AgentFailure("fake: disk full"))

    with pytest.raises(AbortedError) as err:
        fleet.publisher(new).publish(plans, stage="wave-1")

    assert fleet.versions()[canary] == NEW and fleet.versions()[other] == BASE
    assert f"{canary}: failed (rollback failed" in str(err.value)
    assert "reverted 1 node(s)" in str(err.value)
    assert f"STILL ON {NEW}: {canary}" in str(err.value)


# --- bake -----------------------------------------------------------------------------------


def test_health_failure_during_bake_aborts(fleet, base, new):
    plans = fleet.plans(new, specs())
    canary = plans[0].nodes[0]
    start = fleet.clock()
    fleet.agents[canary].at(start + 20, lambda agent: agent.set_reported_health("fail"))

    with pytest.raises(AbortedError) as err:
        fleet.publisher(new).publish(plans, all_stages=True)

    assert f"stage canary failed on {canary}" in str(err.value)
    assert "reverted 1 node(s)" in str(err.value)
    assert fleet.calls("rollback") == [(canary, "rollback")]
    assert fleet.touched() == {canary}
    assert fleet.versions() == {n: BASE for n in fleet.agents}
    assert start + 20 <= fleet.clock() < start + CANARY_BAKE, "aborted when it went bad"


def test_unknown_health_at_end_of_bake_pauses_then_a_rerun_continues(fleet, base, new):
    plans = fleet.plans(new, specs())
    nodes = stage_nodes(plans)
    canary = nodes["canary"][0]
    fleet.agents[canary].set_verdict(NEW, None)
    start = fleet.clock()

    with pytest.raises(NotNowError) as err:
        fleet.publisher(new).publish(plans, all_stages=True)

    assert err.value.code == "paused"
    assert canary in str(err.value) and "neither pass nor fail" in str(err.value)
    assert fleet.clock() >= start + CANARY_BAKE, "the whole bake was waited"
    assert fleet.versions()[canary] == NEW, "a pause is no abort: nothing reverted"
    assert fleet.calls("rollback") == []
    assert fleet.touched() == {canary}

    fleet.agents[canary].set_reported_health("pass")  # a human looked
    fleet.forget_calls()
    report = fleet.publisher(new).publish(plans)
    assert report.stages_run == ["wave-1"]
    assert fleet.touched() == set(nodes["wave-1"])


# --- approvals ------------------------------------------------------------------------------


GATED = {"wave_1": {"approval": True}}


@pytest.fixture
def gated(fleet, base, new) -> list[StagePlan]:
    """wave-1 needs an approval; the canary stage is done."""
    plans = fleet.plans(new, specs(**GATED))
    fleet.install(new, plans[0].nodes)
    return plans


def test_gated_stage_without_approval_changes_nothing(fleet, new, gated):
    before = fleet.versions()
    with pytest.raises(NotNowError) as err:
        fleet.publisher(new).publish(gated, all_stages=True)
    assert err.value.code == "approval_required"
    assert "'wave-1'" in str(err.value)
    assert_nothing_changed(fleet, before)


@pytest.mark.parametrize("recorded_on", ["every node", "one node of the stage"])
def test_approval_in_history_opens_the_stage(fleet, new, gated, recorded_on):
    nodes = stage_nodes(gated)
    where = None if recorded_on == "every node" else nodes["wave-1"][-1:]
    fleet.approve(new, "wave-1", gated, by="alice", nodes=where)

    report = fleet.publisher(new).publish(gated, stage="wave-1")

    assert report.stages_run == ["wave-1"]
    assert fleet.touched() == set(nodes["wave-1"])
    for node in nodes["wave-1"]:
        assert fleet.versions()[node] == NEW
        activation = [r for r in fleet.agents[node].records()
                      if r["action"] == "activate" and r.get("stage") == "wave-1"]
        assert activation[-1]["approval"]["approval"]["approved_by"] == "alice"


@pytest.mark.parametrize("mismatch", ["digest", "stage", "version", "node outside stage"])
def test_approval_for_something_else_does_not_open_the_stage(fleet, new, gated, mismatch):
    nodes = stage_nodes(gated)
    if mismatch == "digest":  # approved, then rebuilt: the approval names the old bytes
        fleet.approve(new, "wave-1", gated, digest="0" * 64)
    elif mismatch == "stage":
        fleet.approve(new, "all", gated)
    elif mismatch == "version":
        fleet.approve(new, "wave-1", gated, version="1.1.1")
    else:
        fleet.approve(new, "wave-1", gated, nodes=nodes["all"])
    before = fleet.versions()

    with pytest.raises(NotNowError) as err:
        fleet.publisher(new).publish(gated, stage="wave-1")

    assert err.value.code == "approval_required"
    assert_nothing_changed(fleet, before)


def test_approval_for_a_rebuild_of_the_same_version_does_not_open_it(fleet, new, gated):
    rebuilt = fleet.release(NEW, content=b"same version, other bytes")
    assert rebuilt.manifest.bundle.sha256 != new.manifest.bundle.sha256
    fleet.approve(new, "wave-1", gated)
    before = fleet.versions()
    with pytest.raises(NotNowError) as err:
        fleet.publisher(rebuilt).publish(gated, stage="wave-1")
    assert err.value.code == "approval_required"
    assert_nothing_changed(fleet, before)


def test_expired_approval_does_not_open_the_stage(fleet, new, gated):
    fleet.approve(new, "wave-1", gated, valid=timedelta(hours=1))
    fleet.clock.advance(2 * 3600)
    before = fleet.versions()
    with pytest.raises(NotNowError) as err:
        fleet.publisher(new).publish(gated, stage="wave-1")
    assert err.value.code == "approval_required" and "expired at" in str(err.value)
    assert_nothing_changed(fleet, before)


def test_signed_approval_reaches_agents_that_require_one(fleet, new, gated):
    nodes = stage_nodes(gated)
    for node in nodes["wave-1"]:
        fleet.agents[node].require_signed_approvals = True
    envelope = {"format": "hotrelease/envelope/v1", "payload_type": "approval",
                "signatures": [{"keyid": "k1", "sig": "c2ln"}]}
    fleet.approve(new, "wave-1", gated, envelope=envelope)

    report = fleet.publisher(new).publish(gated, stage="wave-1")

    assert report.stages_run == ["wave-1"]
    assert all(fleet.versions()[n] == NEW for n in nodes["wave-1"])


# --- supersede ------------------------------------------------------------------------------


def test_fleet_on_two_other_versions_is_refused(fleet, base, new):
    fleet.install(fleet.release("1.0.1"), ["node-2", "node-4"])
    before = fleet.versions()
    with pytest.raises(PolicyError) as err:
        fleet.publisher(new).publish(fleet.plans(new, specs()), all_stages=True)
    assert "1.0.0, 1.0.1" in str(err.value) and "another rollout" in str(err.value)
    assert_nothing_changed(fleet, before)


def test_fleet_on_a_newer_version_is_refused(fleet, new):
    fleet.install(fleet.release("1.2.0"))
    before = fleet.versions()
    with pytest.raises(PolicyError) as err:
        fleet.publisher(new).publish(fleet.plans(new, specs()), all_stages=True)
    assert "1.2.0, newer than 1.1.0" in str(err.value)
    assert_nothing_changed(fleet, before)


# --- stage= ---------------------------------------------------------------------------------


def test_stage_option_runs_only_that_stage(fleet, base, new):
    plans = fleet.plans(new, specs())
    nodes = stage_nodes(plans)
    fleet.install(new, nodes["canary"])

    report = fleet.publisher(new).publish(plans, stage="wave-1", all_stages=True)

    assert report.stages_run == ["wave-1"]
    assert (report.complete, report.next_stage) == (False, "all")
    assert fleet.touched() == set(nodes["wave-1"])
    assert {n for n, v in fleet.versions().items() if v == NEW} == \
        set(nodes["canary"] + nodes["wave-1"])


@pytest.mark.parametrize("stage, incomplete", [("wave-1", "canary"), ("all", "wave-1")])
def test_stage_option_refuses_when_an_earlier_stage_is_incomplete(fleet, base, new, stage,
                                                                  incomplete):
    plans = fleet.plans(new, specs())
    if incomplete == "wave-1":
        fleet.install(new, plans[0].nodes)
    before = fleet.versions()
    with pytest.raises(PolicyError) as err:
        fleet.publisher(new).publish(plans, stage=stage)
    assert f"stage {incomplete!r} is not complete" in str(err.value)
    assert_nothing_changed(fleet, before)


def test_unknown_stage_is_refused_before_any_call(fleet, base, new):
    with pytest.raises(PolicyError) as err:
        fleet.publisher(new).publish(fleet.plans(new, specs()), stage="wave-9")
    assert "no stage 'wave-9'" in str(err.value)
    assert fleet.calls() == []


def test_stage_option_reruns_a_done_stage_to_retry_its_tolerated_failure(fleet, base, new):
    plans = fleet.plans(new, specs(wave_1={"failure_threshold": 1}))
    nodes = stage_nodes(plans)
    victim = nodes["wave-1"][0]
    fleet.agents[victim].unreachable = True
    fleet.publisher(new).publish(plans, all_stages=True)
    assert fleet.versions()[victim] == BASE

    fleet.agents[victim].unreachable = False
    fleet.forget_calls()
    report = fleet.publisher(new).publish(plans, stage="wave-1")

    assert report.stages_run == ["wave-1"]
    assert {o.node: o.result for o in report.outcomes} == \
        {victim: "activated", nodes["wave-1"][1]: "already"}
    assert fleet.touched() == {victim}
    assert fleet.versions() == {n: NEW for n in fleet.agents}


def test_fake_agent_is_the_agent_api():
    """The fake offers every method of the protocol the Publisher drives."""
    from hotrelease.rollout.nodes import AgentAPI

    wanted = {m for m in vars(AgentAPI) if not m.startswith("_")}
    assert wanted == {"plugin", "upload", "activate", "rollback", "history",
                      "post_approval", "post_label"}
    assert all(callable(getattr(FakeAgent, m)) for m in wanted)


# --- an answer is not "unreachable" -------------------------------------------------------


class _Answers:
    """A client whose agent answers every state read with one error (or never answers)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def plugin(self, name: str) -> dict:
        self.calls += 1
        raise self.error


def test_a_node_whose_agent_answered_with_an_error_is_reachable_with_that_error():
    from hotrelease.config.inventory import RolloutSettings
    from hotrelease.errors import AgentError, UnreachableError
    from hotrelease.rollout.nodes import read_fleet

    refused = _Answers(AgentError("agent http://a: bad token (unauthorized)",
                                  code="unauthorized", status=401))
    silent = _Answers(UnreachableError("agent http://b: ConnectionError"))
    states = read_fleet({"a": refused, "b": silent}, "greeter", ["a", "b"],
                        RolloutSettings(retries=2, retry_backoff=0), sleep=lambda s: None)
    assert states["a"].reachable and "unauthorized" in (states["a"].error or "")
    assert refused.calls == 1, "a refusal is not retried"
    assert not states["b"].reachable and silent.calls == 3


# --- a resumed rollout waits out the rest of a bake ---------------------------------------


def test_a_resumed_run_waits_out_the_rest_of_the_bake_the_killed_run_started(fleet, base,
                                                                           new):
    plans = fleet.plans(new, specs())
    fleet.install(new, plans[0].nodes)  # the killed run activated the canary ...
    fleet.clock.advance(CANARY_BAKE / 4)  # ... and was killed a quarter into its bake
    fleet.forget_calls()
    before = len(fleet.clock.sleeps)
    start = fleet.clock()

    fleet.publisher(new).publish(plans, all_stages=True)

    assert {n for n, m in fleet.calls("activate")} == set(plans[1].nodes) | set(plans[2].nodes)
    waited = sum(fleet.clock.sleeps[before:]) - WAVE_BAKE
    assert waited == pytest.approx(CANARY_BAKE * 3 / 4), "the rest of the canary bake"
    assert fleet.clock() - start >= CANARY_BAKE * 3 / 4 + WAVE_BAKE


def test_a_resumed_run_after_the_bake_is_over_goes_on_at_once(fleet, base, new):
    plans = fleet.plans(new, specs())
    fleet.install(new, plans[0].nodes)
    fleet.clock.advance(CANARY_BAKE * 2)
    before = len(fleet.clock.sleeps)
    fleet.publisher(new).publish(plans, all_stages=True)
    assert sum(fleet.clock.sleeps[before:]) == pytest.approx(WAVE_BAKE)
