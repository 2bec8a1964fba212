"""Talking to the node agents: the interface the rollout drives every node through, one call
with retries, and what each node runs now, read concurrently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hotrelease.config.inventory import RolloutSettings
from hotrelease.errors import HotreleaseError, UnreachableError


class AgentAPI(Protocol):
    def plugin(self, name: str) -> dict[str, Any]: ...
    def upload(self, manifest_path: Path, signature_path: Path, bundle_path: Path) -> Any: ...
    def activate(self, name: str, version: str, *, stage: str | None = None,
                 release_id: str | None = None, pipeline_url: str | None = None,
                 approval: dict[str, Any] | None = None,
                 reason: str | None = None, timeout: float | None = None) -> dict[str, Any]: ...
    def rollback(self, name: str, version: str | None = None, *, stage: str | None = None,
                 pipeline_url: str | None = None, reason: str | None = None,
                 approval: dict[str, Any] | None = None, allow_expired: bool = False,
                 timeout: float | None = None) -> dict[str, Any]: ...
    def history(self, name: str) -> list[dict[str, Any]]: ...
    def post_approval(self, name: str, approval: dict[str, Any],
                      envelope: dict[str, Any] | None) -> Any: ...
    def post_label(self, name: str, label: dict[str, Any],
                   envelope: dict[str, Any]) -> Any: ...


@dataclass
class NodeState:
    node: str
    reachable: bool
    current: str | None = None
    previous: str | None = None
    state: str | None = None
    health: str | None = None  # "pass" | "fail" | None (unknown)
    since: str | None = None
    error: str | None = None
    busy: dict[str, Any] | None = None  # an activation or rollback under way on the agent


def _health_of(info: dict[str, Any]) -> str | None:
    health = info.get("health") or info.get("last_health") or {}
    if isinstance(health, dict):
        status = health.get("status") or health.get("result")
    else:
        status = health
    if status in ("pass", "ok", "healthy", True):
        return "pass"
    if status in ("fail", "failed", "unhealthy", False):
        return "fail"
    return None


def call_with_retries(node: str, what: str, fn: Callable[[], Any], settings: RolloutSettings,
                      sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run one agent call, retrying with exponential backoff while the agent is unreachable.
    Refusals (4xx) are not retried: asking again gets the same answer."""
    attempts = settings.retries + 1
    for attempt in range(attempts):
        try:
            return fn()
        except UnreachableError as exc:
            if attempt == attempts - 1:
                raise UnreachableError(f"{node}: {what}: {exc}") from None
            sleep(settings.retry_backoff * (2 ** attempt))
    raise AssertionError("unreachable")


def read_fleet(clients: dict[str, AgentAPI], plugin: str, names: list[str],
               settings: RolloutSettings,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, NodeState]:
    """What each node runs now, read concurrently; an unreachable node is reported, not
    raised. A node whose agent answered with an error (no such slot, a refused token) is
    reachable, with that error: it said something, so it is no "unreachable" node."""
    def one(name: str) -> NodeState:
        try:
            info = call_with_retries(name, "read state", lambda: clients[name].plugin(plugin),
                                     settings, sleep)
        except UnreachableError as exc:
            return NodeState(name, False, error=str(exc))
        except HotreleaseError as exc:
            if exc.code in ("not_found", "unknown_plugin", "plugin_not_found"):
                return NodeState(name, True)
            return NodeState(name, True, error=str(exc))
        busy = info.get("in_progress")
        return NodeState(name, True, info.get("current"), info.get("previous"),
                         info.get("state"), _health_of(info), info.get("activated_at"),
                         busy=busy if isinstance(busy, dict) else None)

    with ThreadPoolExecutor(max_workers=max(1, min(settings.concurrency, len(names)))) as pool:
        return {s.node: s for s in pool.map(one, names)}
