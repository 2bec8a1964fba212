"""One release against the configured fleet: gathers config, manifest, decision, stage plan
and agent clients, then publishes, approves, reports or rolls back.

This is the layer the CLI (and the child pipeline, and the demo) calls; the stage engine
itself is `hotrelease.rollout.engine.Publisher`. No UI: progress arrives at the caller as
`engine.Event`s, notes (a warning, the notify hook's answer, a wait for the window) through
a `notice` callback; the progress display and the tables are `commands.render`. Imports
`config`, `gate`, `rollout` and `trust`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hotrelease.config.inventory import Inventory, lane_stages
from hotrelease.config.project import ProjectConfig, load_config
from hotrelease.errors import (
    ConfigError,
    HotreleaseError,
    NotNowError,
    PolicyError,
    UnreachableError,
    UsageError,
)
from hotrelease.gate.decision import ReleaseDecision
from hotrelease.rollout.baseline import fleet_baseline, make_clients
from hotrelease.rollout.engine import Event, Publisher
from hotrelease.rollout.nodes import AgentAPI, NodeState, read_fleet
from hotrelease.rollout.plan import StagePlan, release_plan
from hotrelease.trust.approvals import Approval
from hotrelease.trust.manifest import ReleaseManifest, load_manifest
from hotrelease.trust.times import format_time

Notice = Callable[[str], None]


def _ignore(_: object) -> None:
    pass


def inventory_of(cfg: ProjectConfig) -> Inventory:
    inventory: Inventory | None = getattr(cfg, "inventory", None)
    if inventory is None or not inventory.nodes:
        raise ConfigError(f"{cfg.path}: nodes: no nodes configured (add [[nodes]] or "
                          "`inventory = \"inventory.toml\"`)")
    return inventory


@dataclass
class FleetSession:
    cfg: ProjectConfig
    manifest: ReleaseManifest
    manifest_path: Path
    inventory: Inventory
    decision: ReleaseDecision
    now: datetime
    labels: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, manifest_path: Path, *, config: Path | None, now: datetime,
             labels: Sequence[Path] = (), env: Mapping[str, str] | None = None
             ) -> FleetSession:
        """`env`: agent tokens, $CI_PIPELINE_URL and the approver's login (default:
        os.environ)."""
        from hotrelease.gate.inputs import decide_release

        env = os.environ if env is None else env
        cfg = load_config(config)
        manifest = _verified_manifest(cfg, manifest_path, now)
        inventory = inventory_of(cfg)
        decision = decide_release(cfg, manifest=manifest, manifest_path=manifest_path,
                                  repo=cfg.root, labels=list(labels), now=now,
                                  stages=lane_stages(inventory),
                                  fleet_baseline=fleet_baseline(inventory, env))
        return cls(cfg, manifest, manifest_path, inventory, decision, now, tuple(labels), env)

    # --- the plan -------------------------------------------------------------------------
    @property
    def lane(self) -> str:
        return str(self.decision.lane)

    def plans(self) -> list[StagePlan]:
        return release_plan(self.manifest.release_id, self.inventory, self.decision)

    def clients(self) -> dict[str, AgentAPI]:
        return make_clients(self.inventory, self.env)

    def publisher(self, emit: Callable[[Event], None] = _ignore) -> Publisher:
        meta = {"release_id": self.manifest.release_id, "lane": self.lane,
                "pipeline_url": self.env.get("CI_PIPELINE_URL"),
                "plan_digest": self.decision.plan_digest}
        return Publisher(self.manifest, self.manifest_path,
                         Path(f"{self.manifest_path}.sig"),
                         self.manifest_path.parent / self.manifest.bundle.filename,
                         self.inventory.nodes, self.clients(),
                         self.inventory.settings, lane=self.lane, emit=emit,
                         now=self.clock_now, meta={k: v for k, v in meta.items() if v})

    def clock_now(self) -> datetime:
        """`--now` (or the real time at start) moving on with the real clock."""
        return self.now + timedelta(seconds=time.monotonic() - self.started)

    def check_gate(self, plan_digest: str | None, wait: bool,
                   notice: Notice = _ignore) -> None:
        d = self.decision
        if d.refused:
            raise PolicyError(f"{self.manifest.release_id}: {d.refused}")
        if plan_digest is not None and plan_digest != d.plan_digest:
            raise PolicyError(f"plan changed since it was approved: expected {plan_digest}, "
                              f"now {d.plan_digest} (re-run `hotrelease plan`)",
                              code="plan_changed")
        if d.not_before is None:
            why = d.reasons[-1].message if d.reasons else "no start time"
            raise ConfigError(f"cannot publish {self.manifest.release_id}: {why}")
        if d.not_before > self.now:
            opens = format_time(d.not_before)
            if not wait:
                raise NotNowError(f"{self.manifest.release_id} ({d.release_class}, "
                                  f"{self.lane} lane): next window opens at {opens}",
                                  code="outside_window")
            delay = (d.not_before - self.now).total_seconds()
            notice(f"waiting {delay:.0f}s for the window opening at {opens}")
            time.sleep(delay)

    # --- commands -------------------------------------------------------------------------
    def publish(self, *, stage: str | None, all_stages: bool, plan_digest: str | None,
                dry_run: bool, wait: bool, progress: Callable[[Event], None] = _ignore,
                notice: Notice = _ignore, notify: bool = True) -> dict[str, Any]:
        """`progress` receives the engine's events (stage start, node done, bake ...);
        `notice` the notes a person should read (warnings, who was notified, a wait)."""
        if self.lane == "none":
            return {"release": self.manifest.release_id, "lane": "none", "nodes": [],
                    "complete": True, "message": "nothing to roll out",
                    "decision": self.decision.to_dict()}
        plans = self.plans()
        if dry_run:
            return self._dry_run(plans, stage, plan_digest)
        self.check_gate(plan_digest, wait, notice)
        publisher = self.publisher(progress)
        first = plans[0]
        if self.lane == "urgent" and stage in (None, first.name) and \
                not publisher.stage_done(first, publisher.snapshot(first.nodes)):
            # Labels first: an agent that refuses one stops the rollout before ops are paged.
            self._share_labels(notice)
            # Ops hear about an urgent rollout once: when its first stage starts.
            if notify:
                self._notify(notice)
        report = publisher.publish(plans, stage=stage, all_stages=all_stages)
        return {**report.to_dict(), "class": self.decision.release_class,
                "plan_digest": self.decision.plan_digest}

    def _notify(self, notice: Notice) -> None:
        if not self.decision.notify:
            return
        from hotrelease.rollout.notify import nobody_to_notify, notify_urgent

        nobody = nobody_to_notify(self.cfg.notify, self.cfg.path)
        if nobody is not None:
            notice(f"warning: {nobody}")
            return
        for line in notify_urgent(self.decision, self.cfg.notify):
            notice(f"notify: {line}")

    def _share_labels(self, notice: Notice) -> None:
        """Hand the signed security label to every agent before a security rollout: each
        raises its security floor, so no later rollback can return to the vulnerable
        version. An agent that refuses the label (it does not trust the security team's
        key) stops the rollout before any node changes: shipped without the floor, the fix
        could be rolled back silently. An unreachable agent is only warned about: the
        rollout itself counts it against the stage."""
        if self.decision.release_class != "security":
            return
        from hotrelease.trust.canonical import strict_loads
        from hotrelease.trust.labels import label_path_for

        paths = list(self.labels) or [label_path_for(self.manifest.name,
                                                     self.manifest.version,
                                                     self.manifest_path.parent)]
        clients = self.clients()
        refused: dict[str, HotreleaseError] = {}
        for path in paths:
            try:
                label = strict_loads(path.read_bytes())
                envelope = strict_loads(Path(f"{path}.sig").read_bytes())
            except (OSError, ValueError) as exc:
                raise UsageError(f"{path}: security label unreadable: {exc}") from None
            for name, client in clients.items():
                try:
                    client.post_label(self.manifest.name, label, envelope)
                except UnreachableError as exc:
                    notice(f"warning: security label not delivered to {name}: {exc}")
                except HotreleaseError as exc:
                    refused[name] = exc
        if refused:
            detail = "; ".join(f"{node}: {exc}" for node, exc in refused.items())
            raise PolicyError(f"{self.manifest.release_id}: the security label was refused by "
                              f"{len(refused)} node(s), so their security floor would not "
                              f"rise; nothing was rolled out (add the security team's key to "
                              f"[trust] security_keys in their agent.toml): {detail}",
                              code="label_refused")

    def _dry_run(self, plans: list[StagePlan], stage: str | None,
                 plan_digest: str | None) -> dict[str, Any]:
        states = self.publisher().snapshot()
        rows = []
        for plan in plans:
            if stage is not None and plan.name != stage:
                continue
            for node in plan.nodes:
                state = states[node]
                action = ("unreachable" if not state.reachable else
                          f"agent answered with an error: {state.error}" if state.error else
                          "already" if state.current == self.manifest.version else
                          f"upload + activate ({state.current or 'nothing'} -> "
                          f"{self.manifest.version})")
                rows.append({"stage": plan.name, "node": node, "action": action,
                             "needs_approval": plan.needs_approval})
        d = self.decision
        gate = None
        if d.refused:
            gate = f"refused: {d.refused}"
        elif plan_digest is not None and plan_digest != d.plan_digest:
            gate = f"plan changed: now {d.plan_digest}"
        elif d.not_before is None:
            gate = "no start time: " + (d.reasons[-1].message if d.reasons else "?")
        elif d.not_before > self.now:
            gate = f"next window opens at {format_time(d.not_before)}"
        return {"release": self.manifest.release_id, "lane": self.lane, "dry_run": True,
                "class": d.release_class, "gate": gate, "plan_digest": d.plan_digest,
                "nodes": rows}

    def approve(self, stage: str, *, by: str | None, private_key: Any,
                valid_hours: int) -> dict[str, Any]:
        plans = {p.name: p for p in self.plans()}
        if stage not in plans:
            raise UsageError(f"no stage {stage!r} in the {self.lane} lane "
                             f"(stages: {', '.join(plans)})")
        approver = by or self.env.get("GITLAB_USER_LOGIN") or self.env.get("USER")
        if not approver:
            raise UsageError("who approves? give --by (in GitLab: $GITLAB_USER_LOGIN)")
        approval = Approval(self.manifest.name, self.manifest.version,
                            self.manifest.bundle.sha256, stage, approver, self.now,
                            self.now + timedelta(hours=valid_hours), plans[stage].nodes)
        envelope = approval.sign(private_key).to_dict() if private_key is not None else None
        clients = self.clients()
        recorded: list[str] = []
        errors: dict[str, HotreleaseError] = {}
        for node in self.inventory.nodes:
            try:
                clients[node.name].post_approval(self.manifest.name, approval.to_dict(),
                                                 envelope)
                recorded.append(node.name)
            except HotreleaseError as exc:
                errors[node.name] = exc
        if not recorded:
            raise _no_node_took_it("approval", errors)
        failed = {name: str(exc) for name, exc in errors.items()}
        return {"release": self.manifest.release_id, "stage": stage,
                "bundle_sha256": self.manifest.bundle.sha256, "approved_by": approver,
                "signed": envelope is not None, "nodes": list(plans[stage].nodes),
                "recorded_on": recorded, "not_recorded": failed,
                "expires": format_time(approval.expires)}

    def status(self) -> dict[str, Any]:
        publisher = self.publisher()
        states = publisher.snapshot()
        plans = self.plans()
        stages = []
        reached = None
        for plan in plans:
            done = publisher.stage_done(plan, states)
            approval = publisher.find_approval(plan) if plan.needs_approval else None
            stages.append({"stage": plan.name, "nodes": list(plan.nodes), "done": done,
                           "needs_approval": plan.needs_approval,
                           "approved_by": (approval or {}).get("approval", {}).get(
                               "approved_by") if approval else None})
            if done:
                reached = plan.name
        d = self.decision
        pending = (format_time(d.not_before) if d.not_before is not None
                   and d.not_before > self.now else None)
        return {"release": self.manifest.release_id, "class": d.release_class,
                "lane": self.lane, "stage_reached": reached, "stages": stages,
                "pending_window": pending, "nodes": [_state_dict(s) for s in states.values()]}

    def rollback(self, *, stage: str | None, dry_run: bool,
                 allow_expired: bool = False) -> dict[str, Any]:
        plans = self.plans()
        if stage is not None:
            chosen = [p for p in plans if p.name == stage]
            if not chosen:
                raise UsageError(f"no stage {stage!r} in the {self.lane} lane")
            scope = list(chosen[0].nodes)
        else:
            scope = [n.name for n in self.inventory.nodes]
        publisher = self.publisher()
        states = publisher.snapshot(scope)
        targets = [n for n in scope if states[n].reachable
                   and states[n].current == self.manifest.version]
        if dry_run:
            nodes = [{"node": n, "result": "would roll back", "version": states[n].previous}
                     for n in targets]
        else:
            nodes = [o.__dict__ for o in publisher.revert(
                targets, f"hotrelease rollback of {self.manifest.release_id}",
                allow_expired=allow_expired)]
        untouched = [{"node": n, "result": "not on this release",
                      "version": states[n].current} for n in scope if n not in targets]
        return {"release": self.manifest.release_id, "nodes": nodes + untouched}


def _no_node_took_it(what: str, errors: dict[str, HotreleaseError]) -> HotreleaseError:
    """Every node said no or said nothing. A refusal is an answer (exit 1, the first
    refusal's class and code); only when no agent answered at all is it exit 5."""
    detail = "; ".join(f"{node}: {exc}" for node, exc in errors.items())
    refusals = [exc for exc in errors.values() if not isinstance(exc, UnreachableError)]
    if refusals:
        return HotreleaseError(f"{what} refused by every node: {detail}",
                               code=refusals[0].code)
    return UnreachableError(f"{what} could not be recorded on any node: {detail}")


def _verified_manifest(cfg: ProjectConfig, path: Path, now: datetime) -> ReleaseManifest:
    """Verify locally when release keys are configured (agents verify again anyway)."""
    if cfg.trust.release_keys:
        from hotrelease.trust.keys import load_trusted
        from hotrelease.trust.verify import verify_release

        return verify_release(path, trusted=load_trusted(cfg.trust.release_keys),
                              threshold=cfg.trust.threshold, now=now)
    return load_manifest(path)


def _state_dict(state: NodeState) -> dict[str, Any]:
    return {"node": state.node, "reachable": state.reachable, "version": state.current,
            "previous": state.previous, "state": state.state, "health": state.health,
            "since": state.since, "error": state.error}


def fleet_status(*, config: Path | None, plugin: str | None) -> dict[str, Any]:
    cfg = load_config(config)
    inventory = inventory_of(cfg)
    name = plugin or cfg.plugin.name
    states = read_fleet(make_clients(inventory), name, [n.name for n in inventory.nodes],
                        inventory.settings)
    return {"plugin": name, "nodes": [_state_dict(s) for s in states.values()]}
