"""The stages of a release and which of them wait for an approval: derived here, only here.

`stage_gates()` is the one derivation. `gate.decision` records its answer in the decision
(`stages`, `approval_stages`) and so in the plan digest; `rollout.plan.release_plan` assigns
nodes to exactly those stages with exactly those gates; the GitLab child pipeline writes a
job per stage from the same answer. Nobody else slices stages for a prerelease or adds the
approvals of a major release.

The stage names come from the project's rollout config, declared once in `config.inventory`
(which builds a `LaneStages`); the gate never reads the config itself. Pure, and imports
nothing from hotrelease.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# Stage names: one list for every lane, or a list per lane (`urgent`, `scheduled`).
Stages = Sequence[str] | Mapping[str, Sequence[str]]


def of_lane(per_lane: Mapping[str, Sequence[T]], lane: str) -> list[T]:
    """A lane's entry of a per-lane mapping (stage names, stage specs); a lane without its
    own (e.g. `none`) takes the scheduled one."""
    return list(per_lane.get(lane) or per_lane.get("scheduled") or [])


@dataclass(frozen=True)
class LaneStages:
    """What a rollout config says about stages: their names (per lane, or one list for
    every lane), the stages it always gates behind an approval (per lane), and what the
    stage plan is computed from (`inputs`: nodes and stage specs, covered by the plan
    digest; None without a fleet)."""

    names: Stages = ()
    gated: Mapping[str, Sequence[str]] = field(default_factory=dict)
    inputs: Mapping[str, Any] | None = None

    def for_lane(self, lane: str) -> list[str]:
        """Stage names for a lane; a lane without its own list (e.g. `none`) uses the
        scheduled one."""
        if isinstance(self.names, Mapping):
            return of_lane(self.names, lane)
        return list(self.names)


@dataclass(frozen=True)
class StageGates:
    """The stages a release goes through, in order, and those that need an approval."""

    stages: list[str]
    approval: list[str]


def stage_gates(lanes: LaneStages, lane: str, *, canary_only: bool,
                needs_approval: bool) -> StageGates:
    """The stages of `lane`; only the first (the canary) when `canary_only` (a prerelease).
    An approval is needed before a stage the config always gates, and, when the class needs
    one (`needs_approval`, e.g. major), before every stage after the first."""
    stages = lanes.for_lane(lane)
    planned = stages[:1] if canary_only else stages
    always = set(lanes.gated.get(lane, ()))
    approval = [s for i, s in enumerate(planned) if s in always or (needs_approval and i > 0)]
    return StageGates(planned, approval)
