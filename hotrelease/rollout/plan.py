"""Stage plans: which nodes get a release in which stage.

The plan is a pure function of (release, inventory, stage specs): nodes are ranked by a hash
of the release id and the node name, so every CI job (and every release manager's laptop)
computes the same canary and the same waves, and a killed publish can simply be re-run.

Which stages a release goes through and which need an approval is not decided here: that is
`gate.stages.stage_gates()`, recorded in the release decision. `release_plan()` assigns the
fleet's nodes to exactly the decision's stages, with its gates (moving a gate off a stage
that reaches no node). Imports `config.inventory` and `gate` only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from dataclasses import dataclass, replace

from hotrelease.config.inventory import Inventory, Node, StageSpec
from hotrelease.gate.decision import ReleaseDecision
from hotrelease.gate.stages import of_lane


@dataclass(frozen=True)
class StagePlan:
    name: str
    nodes: tuple[str, ...]
    bake_seconds: float
    failure_threshold: int
    needs_approval: bool


def rank_nodes(release_key: str, nodes: list[Node]) -> list[Node]:
    def score(node: Node) -> str:
        return hashlib.sha256(f"{release_key}\0{node.name}".encode()).hexdigest()

    return sorted(nodes, key=lambda n: (score(n), n.name))


def plan_stages(release_key: str, nodes: list[Node], stages: list[StageSpec],
                *, gated: Collection[str] | None = None) -> list[StagePlan]:
    """Deterministic stage plan. `gated`: the stages that need an approval (default: each
    stage's own `approval` flag; a release decision adds more, e.g. every stage after the
    canary of a major release).

    A gate is never lost to a stage that reaches no node (a small fleet is used up by the
    stages before it): it passes to the next stage that has nodes, or, when none follows,
    to the last one that has: that stage is the one that completes the fleet."""
    ranked = rank_nodes(release_key, nodes)
    assigned: list[str] = []
    plans: list[StagePlan] = []
    total = len(nodes)
    carried = False
    for spec in stages:
        if spec.percent is not None:
            target = math.ceil(total * spec.percent / 100)
        else:
            target = min(spec.nodes or 0, total)
        eligible = [n.name for n in ranked if n.name not in assigned
                    and (not spec.groups or set(spec.groups) & set(n.groups))]
        take = eligible[:max(target - len(assigned), 0)]
        assigned.extend(take)
        needs = (spec.approval if gated is None else spec.name in gated) or carried
        carried = needs and not take
        plans.append(StagePlan(spec.name, tuple(take), spec.bake_seconds,
                               spec.failure_threshold, needs and bool(take)))
    reaching = [i for i, plan in enumerate(plans) if plan.nodes]
    if carried and reaching:
        plans[reaching[-1]] = replace(plans[reaching[-1]], needs_approval=True)
    return plans


def release_plan(release_id: str, inventory: Inventory,
                 decision: ReleaseDecision) -> list[StagePlan]:
    """The one stage plan of a release: `plan`, `publish`, `approve`, `status`, `rollback`
    and the GitLab child pipeline all take it from here, so they cannot disagree. The
    stages and their gates are the decision's (`stages`, `approval_stages`); the specs
    (shares, groups, bakes, thresholds) are the lane's in the inventory."""
    specs = {spec.name: spec for spec in of_lane(inventory.stages, decision.lane)}
    unknown = [name for name in decision.stages if name not in specs]
    if unknown:
        raise ValueError(f"the decision names stages the inventory does not have "
                         f"({', '.join(unknown)}): decide with the inventory's stages")
    return plan_stages(release_id, inventory.nodes, [specs[n] for n in decision.stages],
                       gated=decision.approval_stages)
