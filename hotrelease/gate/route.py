"""Routing: which lane a classified release takes and when it may start.

Urgent (now, unless a freeze holds it and break-glass is not allowed) or scheduled (the next
maintenance window, never inside a freeze). Pure: a classification, the schedule, the policy
and an explicit `now` in; a `Routing` with its reasons out. `gate.decision` calls `route()`.
Imports `gate.classify`, `gate.policy` and `gate.schedule` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hotrelease.gate.classify import Classification
from hotrelease.gate.policy import Policy, Reason
from hotrelease.gate.schedule import Freeze, Schedule, Slot


@dataclass
class Routing:
    lane: str  # "urgent" | "scheduled" | "none"
    not_before: datetime | None
    slot: Slot | None = None
    break_glass: bool = False
    notify: bool = False
    reasons: list[Reason] = field(default_factory=list)


def _names(freezes: Sequence[Freeze]) -> str:
    return ", ".join(f.name for f in freezes)


def route_urgent(schedule: Schedule, now: datetime, *, signed: bool, policy: Policy
                 ) -> Routing:
    """Urgent: start now, unless a freeze holds and break-glass is not allowed."""
    routing = Routing("urgent", now, notify=True)
    frozen = schedule.freezes_at(now)
    if not frozen:
        routing.reasons.append(Reason("lane.urgent", "urgent lane: may start now; notify "
                                                     "ops ([notify])"))
        return routing
    why_not = ("the security claim is not signed" if not signed else
               "policy.break_glass is false" if not policy.break_glass else
               f"freeze {_names([f for f in frozen if not f.break_glass])} does not allow "
               "break-glass" if not all(f.break_glass for f in frozen) else None)
    if why_not is None:
        routing.break_glass = True
        routing.reasons.append(Reason(
            "freeze.break-glass", f"break-glass: signed security label pierces freeze "
                                  f"{_names(frozen)}; may start now; notify ops "
                                  "([notify])"))
        return routing
    routing.not_before = schedule.unfrozen_from(now)
    when = "may start when it ends" if routing.not_before is not None else \
        "and it does not end within the search horizon"
    routing.reasons.append(Reason(
        "freeze.blocks-urgent", f"urgent lane held by freeze {_names(frozen)} "
                                f"({why_not}): {when}"))
    return routing


def route_scheduled(schedule: Schedule, now: datetime, why: str) -> Routing:
    routing = Routing("scheduled", None)
    routing.reasons.append(Reason("lane.scheduled", f"scheduled lane: {why}"))
    frozen = schedule.freezes_at(now)
    if frozen:
        routing.reasons.append(Reason("freeze.active", f"freeze {_names(frozen)} is active now"))
    if not schedule.windows:
        routing.reasons.append(Reason("window.none", "no maintenance windows configured "
                                                     "([[windows]] in hotrelease.toml)"))
        return routing
    slot = schedule.next_window(now)
    if slot is None:
        routing.reasons.append(Reason("window.none", "no usable maintenance window in the "
                                                     "search horizon (all frozen?)"))
        return routing
    routing.slot, routing.not_before = slot, slot.start
    where = "now, inside" if slot.start == now else "at the next"
    routing.reasons.append(Reason("window.next", f"may start {where} window {slot.window!r} "
                                                 f"({slot.start:%Y-%m-%d %H:%M}Z to "
                                                 f"{slot.end:%Y-%m-%d %H:%M}Z)"))
    return routing


def route(c: Classification, schedule: Schedule, policy: Policy, now: datetime) -> Routing:
    """The lane of a classified release: none (refused, or nothing to roll out), urgent
    (security; an explicit rollback when `policy.rollback_lane` says so) or scheduled."""
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
