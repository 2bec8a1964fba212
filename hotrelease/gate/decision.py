"""The release decision: classification + lane + stages and approvals + plan digest. Pure.

`decide()` takes a classification, the schedule, the policy, the rollout config's stages and
an explicit `now`, and returns everything `plan` prints and `publish` needs. The lane comes
from `gate.route`, the stages and their approvals from `gate.stages.stage_gates()` (the one
place they are derived). The plan digest covers the inputs that decided the outcome, not the
clock: the same release under the same config and evidence keeps the same digest, so
`publish --plan DIGEST` can refuse only when something that matters changed.

Imported by `gate.inputs` and by the rollout (which plans nodes from a decision).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hotrelease.gate.classify import Classification, SecurityClaim
from hotrelease.gate.policy import Policy, Reason
from hotrelease.gate.route import route
from hotrelease.gate.schedule import Schedule, Slot
from hotrelease.gate.stages import LaneStages, Stages, stage_gates
from hotrelease.trust.canonical import canonical_bytes
from hotrelease.trust.times import format_time

PLAN_FORMAT = "hotrelease/plan/v1"


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


def decide(c: Classification, *, name: str, bundle_sha256: str | None, baseline_source: str,
           schedule: Schedule, policy: Policy, now: datetime,
           stages: LaneStages | Stages = ()) -> ReleaseDecision:
    """`stages`: the rollout config's stages (a `LaneStages`: names per lane, the stages it
    always gates, and what the stage plan is computed from, covered by the plan digest), or
    plain stage names; none given, the decision plans no stage."""
    lanes = stages if isinstance(stages, LaneStages) else LaneStages(stages)
    routing = route(c, schedule, policy, now)
    gates = stage_gates(lanes, routing.lane, canary_only=c.canary_only,
                        needs_approval=c.needs_approval)
    planned, approval = gates.stages, gates.approval
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
        "rollout": dict(lanes.inputs) if lanes.inputs is not None else None,
    }
    return ReleaseDecision(
        name=name, version=str(c.candidate), bundle_sha256=bundle_sha256,
        baseline=baseline, baseline_source=baseline_source,
        release_class=c.release_class, bump=c.bump, lane=routing.lane,
        not_before=routing.not_before, slot=routing.slot, needs_approval=c.needs_approval,
        stages=planned, approval_stages=approval, canary_only=c.canary_only,
        break_glass=routing.break_glass, notify=routing.notify, refused=c.refused,
        plan_digest=plan_digest(inputs), claims=list(c.claims), reasons=reasons)
