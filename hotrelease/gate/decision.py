"""The release decision: classification + lane + approvals + plan digest. Pure.

`decide()` takes a classification, the schedule, the policy and an explicit `now`, and
returns everything `plan` prints and `publish` (later) needs. The plan digest covers the
inputs that decided the outcome, not the clock: the same release under the same config and
evidence keeps the same digest, so `publish --plan DIGEST` can refuse only when something
that matters changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hotrelease.gate.classify import Classification, SecurityClaim
from hotrelease.gate.policy import Policy
from hotrelease.gate.schedule import Reason, Routing, Schedule, Slot, route_scheduled, route_urgent
from hotrelease.trust.canonical import canonical_bytes
from hotrelease.trust.times import format_time

PLAN_FORMAT = "hotrelease/plan/v1"
# Until stage configuration exists (issue 5): canary first, then the rest of the fleet.
DEFAULT_STAGES = ("canary", "waves")


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


@dataclass
class ReleaseDecision:
    name: str
    version: str
    bundle_sha256: str | None
    baseline: str | None
    baseline_source: str
    release_class: str
    bump: str
    lane: str  # urgent | scheduled | none
    not_before: datetime | None
    slot: Slot | None
    needs_approval: bool
    stages: list[str]
    approval_stages: list[str]
    canary_only: bool
    break_glass: bool
    notify: bool
    refused: str | None
    plan_digest: str
    claims: list[SecurityClaim] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "bundle_sha256": self.bundle_sha256,
            "baseline": self.baseline, "baseline_source": self.baseline_source,
            "class": self.release_class, "bump": self.bump, "lane": self.lane,
            "not_before": _time(self.not_before),
            "window": None if self.slot is None else {
                "name": self.slot.window, "start": _time(self.slot.start),
                "end": _time(self.slot.end)},
            "needs_approval": self.needs_approval, "stages": self.stages,
            "approval_stages": self.approval_stages, "canary_only": self.canary_only,
            "break_glass": self.break_glass, "notify": self.notify, "refused": self.refused,
            "plan_digest": self.plan_digest,
            "security_claims": [c.to_dict() for c in self.claims],
            "rules": [r.to_dict() for r in self.reasons],
        }

    def dotenv(self) -> str:
        """Lines for GitLab's `artifacts:reports:dotenv` (values never contain spaces)."""
        values = {"HOTRELEASE_CLASS": self.release_class, "HOTRELEASE_LANE": self.lane,
                  "HOTRELEASE_NOT_BEFORE": _time(self.not_before) or "",
                  "HOTRELEASE_PLAN_DIGEST": self.plan_digest}
        return "".join(f"{k}={v}\n" for k, v in values.items())


def plan_digest(inputs: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_bytes(inputs)).hexdigest()


def _route(c: Classification, schedule: Schedule, policy: Policy, now: datetime) -> Routing:
    if c.refused is not None:
        return Routing("none", None, reasons=[Reason("lane.none", "refused: nothing to route")])
    if c.release_class == "no-change":
        return Routing("none", None, reasons=[Reason("lane.none", "same version as the "
                                                                  "baseline: nothing to roll out")])
    if c.release_class == "security":
        assert c.security is not None
        return route_urgent(schedule, now, signed=c.security.signed, policy=policy)
    if c.rollback and policy.rollback_lane == "urgent":
        return route_urgent(schedule, now, signed=False, policy=policy)
    why = ("explicit rollback (policy.rollback_lane = scheduled)" if c.rollback
           else f"class {c.release_class} waits for a maintenance window")
    return route_scheduled(schedule, now, why)


Stages = Sequence[str] | Mapping[str, Sequence[str]]


def stages_for(stages: Stages, lane: str) -> list[str]:
    """Stage names for a lane: one list for every lane, or a list per lane (`urgent`,
    `scheduled`); a lane without its own list (e.g. `none`) uses the scheduled one."""
    if isinstance(stages, Mapping):
        return list(stages.get(lane) or stages.get("scheduled") or [])
    return list(stages)


def decide(c: Classification, *, name: str, bundle_sha256: str | None, baseline_source: str,
           schedule: Schedule, policy: Policy, now: datetime,
           stages: Stages = DEFAULT_STAGES,
           gated: Mapping[str, Sequence[str]] | None = None,
           rollout: Mapping[str, Any] | None = None) -> ReleaseDecision:
    """`gated`: per lane, the stages the rollout config always gates behind an approval;
    the class (e.g. major) may add every stage after the first. `rollout`: what the stage
    plan is computed from (inventory and stage specs), covered by the plan digest."""
    routing = _route(c, schedule, policy, now)
    lane_stages = stages_for(stages, routing.lane)
    planned = lane_stages[:1] if c.canary_only else lane_stages
    always = set((gated or {}).get(routing.lane, ()))
    approval = [s for i, s in enumerate(planned)
                if s in always or (c.needs_approval and i > 0)]
    reasons = [*c.reasons, *routing.reasons]
    if approval:
        reasons.append(Reason("approval.stages", f"approval needed before: {', '.join(approval)}"))
    baseline = None if c.baseline is None else str(c.baseline)
    security = None if c.security is None else {
        "source": c.security.source, "advisory": c.security.advisory,
        "signed": c.security.signed, "label_sha256": c.security.label_digest}
    inputs = {
        "format": PLAN_FORMAT, "name": name, "version": str(c.candidate),
        "bundle_sha256": bundle_sha256,
        "baseline": baseline, "rollback": c.rollback,
        "class": c.release_class, "bump": c.bump, "lane": routing.lane,
        "canary_only": c.canary_only, "needs_approval": c.needs_approval,
        "stages": planned, "approval_stages": approval, "security": security,
        "policy": policy.to_dict(), "schedule": schedule.to_dict(),
        "rollout": dict(rollout) if rollout is not None else None,
    }
    return ReleaseDecision(
        name=name, version=str(c.candidate), bundle_sha256=bundle_sha256,
        baseline=baseline, baseline_source=baseline_source,
        release_class=c.release_class, bump=c.bump, lane=routing.lane,
        not_before=routing.not_before, slot=routing.slot, needs_approval=c.needs_approval,
        stages=planned, approval_stages=approval, canary_only=c.canary_only,
        break_glass=routing.break_glass, notify=routing.notify, refused=c.refused,
        plan_digest=plan_digest(inputs), claims=list(c.claims), reasons=reasons)
