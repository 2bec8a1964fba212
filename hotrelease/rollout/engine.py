"""Staged rollout through the node agents: upload + activate per stage, bake, abort.

The CLI stays stateless: progress is read back from the agents (the fleet is the ledger), so
a publish that was killed half way is resumed by running it again. Every node is driven
through `AgentAPI`; failures are retried with backoff, counted against the stage's
threshold, and past it every node this release changed is rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hotrelease.config.inventory import Node, RolloutSettings
from hotrelease.errors import (
    AbortedError,
    HotreleaseError,
    NotNowError,
    PolicyError,
    UnreachableError,
)
from hotrelease.rollout.nodes import (
    AgentAPI,
    NodeOutcome,
    NodeState,
    call_with_retries,
    read_fleet,
    recorded_approval,
)
from hotrelease.rollout.plan import StagePlan
from hotrelease.trust.manifest import ReleaseManifest
from hotrelease.trust.times import parse_iso
from hotrelease.trust.versions import parse_version


@dataclass
class Event:
    kind: str  # stage-start, node, bake, stage-done, abort, approval-missing ...
    stage: str | None = None
    node: str | None = None
    message: str = ""
    total: int = 0


@dataclass
class PublishReport:
    release_id: str
    lane: str
    stages_run: list[str] = field(default_factory=list)
    outcomes: list[NodeOutcome] = field(default_factory=list)
    complete: bool = False
    next_stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release_id, "lane": self.lane, "stages_run": self.stages_run,
                "complete": self.complete, "next_stage": self.next_stage,
                "nodes": [o.__dict__ for o in self.outcomes]}


class Publisher:
    def __init__(self, manifest: ReleaseManifest, manifest_path: Path, signature_path: Path,
                 bundle_path: Path, nodes: list[Node], clients: dict[str, AgentAPI],
                 settings: RolloutSettings, *, lane: str,
                 emit: Callable[[Event], None] = lambda e: None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 meta: dict[str, Any] | None = None) -> None:
        self.manifest = manifest
        self.paths = (manifest_path, signature_path, bundle_path)
        self.nodes = {n.name: n for n in nodes}
        self.clients = clients
        self.settings = settings
        self.lane = lane
        self.emit = emit
        self.sleep = sleep
        self.clock = clock
        self.now = now  # wall clock for approval expiry (the CLI's --now, moving on)
        self.wall = wall  # the real time, to read the agents' activation times against
        self.meta = meta or {}
        self.approval_problem: str | None = None

    # --- reading the fleet ------------------------------------------------------------------
    def _call(self, node: str, what: str, fn: Callable[[], Any]) -> Any:
        return call_with_retries(node, what, fn, self.settings, self.sleep)

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, NodeState]:
        return read_fleet(self.clients, self.manifest.name,
                          list(names if names is not None else self.nodes),
                          self.settings, self.sleep)

    def settle(self, name: str) -> NodeState:
        """The node's state once no activation or rollback is under way on it (one an
        earlier, killed run asked for): a busy node is not a failed node. Bounded by the
        health timeout; still busy then, it is reported busy."""
        deadline = self.clock() + self.settings.health_timeout
        while True:
            state = self.snapshot([name])[name]
            if state.busy is None or self.clock() >= deadline:
                return state
            self.emit(Event("wait", node=name, message=f"{name}: waiting for the "
                            f"{state.busy.action} of "
                            f"{state.busy.version or 'its previous version'} under way"))
            self.sleep(self.settings.poll_interval)

    def check_not_superseding(self, states: dict[str, NodeState]) -> None:
        """Refuse to start while another release is half rolled out: otherwise an abort of
        ours could leave nodes on a third version."""
        target = self.manifest.version
        others = {s.current for s in states.values()
                  if s.reachable and s.current not in (None, target)}
        if len(others) > 1:
            listing = ", ".join(sorted(others, key=parse_version))
            raise PolicyError(f"fleet runs several versions of {self.manifest.name} ({listing}):"
                              " another rollout is in progress; finish or roll it back first")
        newer = [v for v in others if parse_version(v) > parse_version(target)]
        if newer:
            raise PolicyError(f"fleet already runs {newer[0]}, newer than {target}; use "
                              "`hotrelease rollback` to go back")

    def stage_done(self, plan: StagePlan, states: dict[str, NodeState]) -> bool:
        """Done when at most `failure_threshold` of its nodes lack the release (a tolerated
        failure does not block later stages; re-running the stage retries those nodes)."""
        if not plan.nodes:
            return True
        missing = [n for n in plan.nodes
                   if not (states[n].reachable and states[n].current == self.manifest.version)]
        return len(missing) <= plan.failure_threshold and len(missing) < len(plan.nodes)

    # --- approvals ------------------------------------------------------------------------
    def find_approval(self, plan: StagePlan) -> dict[str, Any] | None:
        """The stage's approval recorded on the fleet (`nodes.recorded_approval`: checked here
        too, not only by agents with approver keys); why the last candidate did not count is
        kept in `approval_problem` for the message."""
        found, self.approval_problem = recorded_approval(self.clients, plan.nodes,
                                                         self.manifest, plan.name, self.now)
        return found

    # --- driving a stage ------------------------------------------------------------------
    def _upload_node(self, name: str, plan: StagePlan, state: NodeState) -> NodeOutcome | None:
        """None when the release is stored on the node (uploaded now, or already there)."""
        client = self.clients[name]
        try:
            self._call(name, "upload", lambda: client.upload(*self.paths))
        except HotreleaseError as exc:
            return NodeOutcome.of_error(name, plan.name, state.current, exc)
        return None

    def _activate_node(self, name: str, plan: StagePlan, state: NodeState,
                       approval: dict[str, Any] | None, *, waited: bool = False
                       ) -> NodeOutcome:
        version = self.manifest.version
        try:
            result = self._call(name, "activate", lambda: self.clients[name].activate(
                self.manifest.name, version, stage=plan.name,
                release_id=self.manifest.release_id,
                pipeline_url=self.meta.get("pipeline_url"), approval=approval or None))
        except HotreleaseError as exc:
            if exc.code != "activation_in_progress" or waited:
                return NodeOutcome.of_error(name, plan.name, state.current, exc)
            settled = self.settle(name)
            if settled.busy is not None:
                return NodeOutcome.of_error(name, plan.name, settled.current, exc, f"still busy "
                                            f"after {self.settings.health_timeout:g}s: {exc}")
            if settled.current == version and settled.health != "fail":
                return NodeOutcome(name, plan.name, "activated", version,
                                   "finished the activation an earlier run started")
            return self._activate_node(name, plan, settled, approval, waited=True)
        if result.result in ("rolled_back", "failed"):
            return NodeOutcome(name, plan.name, result.result, result.current,
                               result.reason or "health check failed")
        return NodeOutcome(name, plan.name, "activated", version)

    def run_stage(self, plan: StagePlan, states: dict[str, NodeState],
                  approval: dict[str, Any] | None) -> list[NodeOutcome]:
        """Upload to every node of the stage first, then activate: a slow activation (health
        check) never holds an upload slot, and no node switches before all have the bytes."""
        self.emit(Event("stage-start", plan.name, total=len(plan.nodes),
                        message=f"stage {plan.name}: {len(plan.nodes)} node(s)"))
        version = self.manifest.version
        outcomes: dict[str, NodeOutcome] = {}

        def report(outcome: NodeOutcome) -> NodeOutcome:
            self.emit(Event("node", plan.name, outcome.node, f"{outcome.node}: {outcome.result}"
                            + (f" ({outcome.detail})" if outcome.detail else "")))
            return outcome

        todo = []
        for name in plan.nodes:
            state = states[name]
            if state.reachable and state.current == version and state.health != "fail":
                outcomes[name] = report(NodeOutcome(name, plan.name, "already", version))
            else:
                todo.append(name)
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            uploads = dict(zip(todo, pool.map(
                lambda n: self._upload_node(n, plan, states[n]), todo), strict=True))
            ready = [n for n in todo if uploads[n] is None]
            for name in todo:
                failed = uploads[name]
                if failed is not None:
                    outcomes[name] = report(failed)
            for outcome in pool.map(
                    lambda n: self._activate_node(n, plan, states[n], approval), ready):
                outcomes[outcome.node] = report(outcome)
        return [outcomes[name] for name in plan.nodes]

    def bake_remaining(self, plan: StagePlan, states: dict[str, NodeState]) -> float:
        """What is left of a stage's bake, measured from the agents' own activation times,
        so whichever job resumes a rollout waits out the bake a killed one started."""
        times = []
        for name in plan.nodes:
            state = states[name]
            if state.reachable and state.current == self.manifest.version and state.since:
                try:
                    times.append(parse_iso(state.since))
                except ValueError:
                    return plan.bake_seconds  # unreadable: bake in full
        if not plan.bake_seconds or not times:
            return plan.bake_seconds
        elapsed = (self.wall() - max(times)).total_seconds()
        return min(plan.bake_seconds, max(plan.bake_seconds - elapsed, 0.0))

    def bake(self, plan: StagePlan, nodes: list[str],
             seconds: float | None = None) -> list[NodeOutcome]:
        """Watch the stage's nodes for the bake time (`seconds`: what is left of it); any
        failure aborts, and a health that is neither pass nor fail at the end pauses for a
        human."""
        seconds = plan.bake_seconds if seconds is None else seconds
        deadline = self.clock() + seconds
        if seconds:
            self.emit(Event("bake", plan.name, message=f"stage {plan.name}: baking "
                            f"{seconds:g}s" + ("" if seconds == plan.bake_seconds else
                                               f" (the rest of {plan.bake_seconds:g}s)")))
        if not nodes:
            return []
        while True:
            states = self.snapshot(nodes)
            bad = [NodeOutcome(n, plan.name, "failed" if s.reachable else "unreachable",
                               s.current, s.error or f"health {s.health}, runs {s.current}")
                   for n, s in states.items()
                   if not s.reachable or s.current != self.manifest.version
                   or s.health == "fail"]
            if bad or self.clock() >= deadline:
                break
            self.sleep(min(self.settings.poll_interval, max(deadline - self.clock(), 0)))
        if not bad:
            unknown = [n for n, s in states.items() if s.health is None]
            if unknown:
                raise NotNowError(f"stage {plan.name}: health of {', '.join(unknown)} is "
                                  "neither pass nor fail; paused for a human (re-run publish "
                                  "to continue, or `hotrelease rollback`)", code="paused")
        return bad

    def revert(self, changed: list[str], reason: str, *,
               allow_expired: bool = False) -> list[NodeOutcome]:
        """Each node back to the version it ran before this release. `allow_expired`: even
        if that version's manifest has expired since (the agent records the override)."""
        def rollback(name: str) -> Any:
            return self._call(name, "rollback", lambda: self.clients[name].rollback(
                self.manifest.name, None, reason=reason,
                pipeline_url=self.meta.get("pipeline_url"), allow_expired=allow_expired))

        def one(name: str) -> NodeOutcome:
            try:
                try:
                    result = rollback(name)
                except HotreleaseError as exc:
                    if exc.code != "activation_in_progress":
                        raise
                    settled = self.settle(name)
                    if settled.current != self.manifest.version:
                        return NodeOutcome(name, "abort", "reverted", settled.current,
                                           "its own agent went back")
                    result = rollback(name)
            except HotreleaseError as exc:
                return NodeOutcome(name, "abort", "failed", None, f"rollback failed: {exc}",
                                   code=None if isinstance(exc, UnreachableError) else exc.code)
            return NodeOutcome(name, "abort", "reverted", result.current)

        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(one, changed))

    def abort(self, plan: StagePlan, report: PublishReport,
              failures: list[NodeOutcome]) -> None:
        """Roll back every node of the fleet that runs the aborted release, whichever run
        moved it and in whatever stage, once activations under way there have settled; the
        report says what the agents say afterwards."""
        reason = f"stage {plan.name} failed on {', '.join(f.node for f in failures)}"
        self.emit(Event("abort", plan.name, message=f"ABORT: {reason}; rolling back"))
        scope = list(self.nodes)
        states = self.snapshot(scope)
        states.update({n: self.settle(n) for n in scope if states[n].busy is not None})
        changed = [n for n in scope if states[n].reachable
                   and states[n].current == self.manifest.version]
        # Like the agent's own automatic rollback: back to what ran a moment ago, even if its
        # manifest expired while it ran (recorded as an override on each node).
        reverts = self.revert(changed, reason, allow_expired=True)
        report.outcomes.extend(reverts)
        after = self.snapshot(changed)
        still = [n for n in changed if not after[n].reachable
                 or after[n].current == self.manifest.version]
        by_agent = [f.node for f in failures if f.result == "rolled_back"]
        lines = "; ".join(f"{o.node}: {o.result}" + (f" ({o.detail})" if o.detail else "")
                          for o in report.outcomes if o.result not in ("already", "activated"))
        raise AbortedError(f"{self.manifest.release_id}: {reason}; reverted "
                           f"{len(changed) - len(still)} node(s)"
                           + (f", {len(by_agent)} rolled back by their agent"
                              if by_agent else "")
                           + (f"; STILL ON {self.manifest.version}: {', '.join(still)}"
                              if still else "") + f". {lines}")

    # --- the whole thing ------------------------------------------------------------------
    def publish(self, plans: list[StagePlan], *, stage: str | None = None,
                all_stages: bool = False) -> PublishReport:
        report = PublishReport(self.manifest.release_id, self.lane)
        names = [p.name for p in plans]
        if stage is not None and stage not in names:
            raise PolicyError(f"no stage {stage!r} in the {self.lane} lane "
                              f"(stages: {', '.join(names)})")
        states = self.snapshot([n for p in plans for n in p.nodes])
        self.check_not_superseding(states)
        for index, plan in enumerate(plans):
            done = self.stage_done(plan, states)
            if stage is not None and plan.name != stage:
                if names.index(stage) > index and not done:
                    raise PolicyError(f"stage {plan.name!r} is not complete yet; publish it "
                                      f"before {stage!r}")
                continue
            if done and stage is None:
                # Done by an earlier (maybe killed) run: finish its bake before going on.
                rest = self.bake_remaining(plan, states)
                if rest > 0:
                    on_release = [n for n in plan.nodes if states[n].reachable
                                  and states[n].current == self.manifest.version]
                    baked = self.bake(plan, on_release, rest)
                    if baked:
                        self.abort(plan, report, baked)
                    states.update(self.snapshot(plan.nodes))
                continue
            approval = None
            if plan.needs_approval:
                approval = self.find_approval(plan)
                if approval is None:
                    report.next_stage = plan.name
                    why = (f" (the one found does not count: {self.approval_problem})"
                           if self.approval_problem else "")
                    raise NotNowError(f"stage {plan.name!r} of {self.manifest.release_id} needs "
                                      f"an approval for this bundle digest{why}: "
                                      f"`hotrelease approve MANIFEST --stage {plan.name}`",
                                      code="approval_required")
            outcomes = self.run_stage(plan, states, approval)
            report.stages_run.append(plan.name)
            report.outcomes.extend(outcomes)
            failures = [o for o in outcomes if o.result in ("failed", "unreachable",
                                                            "rolled_back")]
            if any(o.result == "rolled_back" for o in failures) or \
                    len(failures) > plan.failure_threshold:
                self.abort(plan, report, failures)
            healthy = [o.node for o in outcomes if o.result in ("activated", "already")]
            baked = self.bake(plan, healthy)
            if any(b.result == "failed" for b in baked) or \
                    len(baked) + len(failures) > plan.failure_threshold:
                self.abort(plan, report, failures + baked)
            self.emit(Event("stage-done", plan.name, message=f"stage {plan.name}: done"))
            states.update(self.snapshot(plan.nodes))
            if stage is not None or not all_stages:
                break
        remaining = [p.name for p in plans if not self.stage_done(p, states)]
        report.complete = not remaining
        report.next_stage = remaining[0] if remaining else None
        return report
