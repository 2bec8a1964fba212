"""The fleet a project releases to: nodes (inline or in an inventory file) and the rollout
config (stages per lane, retries, timeouts), read from `hotrelease.toml`.

`DEFAULT_STAGES` is the one declaration of the stages a lane goes through when the config
names none (and when there is no config at all); `lane_stages()` hands them to the gate's
decision as a `gate.stages.LaneStages`, and `rollout.plan` assigns nodes to them.
Imports `config.reader` and `gate` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotrelease.config.reader import Table, load_toml
from hotrelease.gate.policy import LANES
from hotrelease.gate.stages import LaneStages


@dataclass(frozen=True)
class Node:
    name: str
    url: str
    token_env: str | None = None  # the variable holding this agent's bearer token
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageSpec:
    """`nodes` or `percent` is the cumulative share of the fleet reached by the end of the
    stage (canary: 1 node; wave-1: 25%; all: 100%), restricted to `groups` if given."""

    name: str
    nodes: int | None = None
    percent: int | None = None
    groups: tuple[str, ...] = ()
    bake_seconds: float = 0.0
    failure_threshold: int = 0
    approval: bool = False


@dataclass
class RolloutSettings:
    concurrency: int = 16  # measured best on 2 cores: 16-32 (bench/bench_publish.py)
    retries: int = 3
    retry_backoff: float = 0.5
    connect_timeout: float = 3.0
    read_timeout: float = 120.0
    poll_interval: float = 1.0
    health_timeout: float = 300.0


@dataclass
class Inventory:
    nodes: list[Node] = field(default_factory=list)
    stages: dict[str, list[StageSpec]] = field(default_factory=dict)
    settings: RolloutSettings = field(default_factory=RolloutSettings)

    def plan_inputs(self) -> dict[str, Any]:
        """Everything a stage plan is computed from (the nodes and every stage's members,
        shares, groups, bakes, thresholds and approvals), for the plan digest: a plan
        approved for one fleet cannot be published to a changed one."""
        return {"nodes": [{"name": n.name, "url": n.url, "groups": sorted(n.groups)}
                          for n in sorted(self.nodes, key=lambda n: n.name)],
                "stages": {lane: [{**asdict(spec), "groups": list(spec.groups),
                                   # canonical JSON has no floats
                                   "bake_seconds": None,
                                   "bake_ms": round(spec.bake_seconds * 1000)}
                                  for spec in specs]
                           for lane, specs in sorted(self.stages.items())}}


DEFAULT_STAGES = {
    "scheduled": [StageSpec("canary", nodes=1, bake_seconds=60),
                  StageSpec("wave-1", percent=25, bake_seconds=60, approval=True),
                  StageSpec("all", percent=100, bake_seconds=0, approval=True)],
    "urgent": [StageSpec("canary", nodes=1, bake_seconds=30),
               StageSpec("all", percent=100, bake_seconds=0)],
}


def lane_stages(inventory: Inventory | None) -> LaneStages:
    """The stages of a release decision: the inventory's stage names per lane, the stages
    its config always gates, and its plan inputs (for the plan digest); no inventory (no
    project config): `DEFAULT_STAGES`."""
    if inventory is None:
        return _lane_stages(DEFAULT_STAGES, None)
    return _lane_stages(inventory.stages, inventory.plan_inputs())


def _lane_stages(stages: Mapping[str, list[StageSpec]],
                 inputs: dict[str, Any] | None) -> LaneStages:
    return LaneStages(names={lane: [s.name for s in specs] for lane, specs in stages.items()},
                      gated={lane: [s.name for s in specs if s.approval]
                             for lane, specs in stages.items()},
                      inputs=inputs)


def _stage(t: Table) -> StageSpec:
    has_nodes, has_percent = t.has("nodes"), t.has("percent")
    if has_nodes == has_percent:
        raise t.error(None, "give exactly one of `nodes` (a count) or `percent`")
    spec = StageSpec(
        name=t.str("name"),
        nodes=t.int("nodes", None, min=1) if has_nodes else None,
        percent=t.int("percent", None, min=1, max=100) if has_percent else None,
        groups=tuple(t.str_list("groups", [])),
        bake_seconds=t.float("bake_seconds", 0.0, min=0),
        failure_threshold=t.int("failure_threshold", 0, min=0),
        approval=t.bool("approval", False),
    )
    t.finish()
    return spec


def _stages(t: Table, lane: str) -> list[StageSpec]:
    tables = t.tables(lane)
    if not tables:
        return list(DEFAULT_STAGES[lane])
    stages = [_stage(s) for s in tables]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise t.error(lane, "stage names must be unique")
    if stages[-1].percent != 100 or stages[-1].groups:
        raise t.error(f"{lane}[{len(stages) - 1}]",
                      "the last stage must reach the whole fleet (percent = 100, no groups)")
    return stages


def parse_nodes(tables: list[Table]) -> list[Node]:
    nodes: list[Node] = []
    for t in tables:
        name = t.str("name")
        if any(n.name == name for n in nodes):
            raise t.error("name", f"node name {name!r} appears twice")
        url = t.str("url")
        if not url.startswith(("http://", "https://")):
            raise t.error("url", f"expected an http:// or https:// URL, got {url!r}")
        nodes.append(Node(name, url.rstrip("/"), t.str("token_env", None),
                          tuple(t.str_list("groups", []))))
        t.finish()
    return nodes


def parse_rollout(t: Table) -> tuple[dict[str, list[StageSpec]], RolloutSettings]:
    settings = RolloutSettings(
        concurrency=t.int("concurrency", 16, min=1, max=256),
        retries=t.int("retries", 3, min=0, max=20),
        retry_backoff=t.float("retry_backoff", 0.5, min=0),
        connect_timeout=t.float("connect_timeout", 3.0, min=0.1),
        read_timeout=t.float("read_timeout", 120.0, min=0.1),
        poll_interval=t.float("poll_interval", 1.0, min=0.05),
        health_timeout=t.float("health_timeout", 300.0, min=0.1),
    )
    stages = {lane: _stages(t, lane) for lane in LANES}
    t.finish()
    return stages, settings


def parse_inventory(top: Table, base: Path) -> Inventory:
    """`[[nodes]]` and `[rollout]` from the project config, or nodes from a separate
    inventory file named by `inventory = "inventory.toml"`."""
    inventory_file = top.str("inventory", None)
    node_tables = top.tables("nodes")
    if inventory_file is not None:
        if node_tables:
            raise top.error("nodes", "give nodes inline or in `inventory`, not both")
        path = base / inventory_file
        inv = Table(load_toml(path), path)
        node_tables = inv.tables("nodes")
        nodes = parse_nodes(node_tables)
        inv.finish()
    else:
        nodes = parse_nodes(node_tables)
    stages, settings = parse_rollout(top.table("rollout"))
    return Inventory(nodes, stages, settings)
