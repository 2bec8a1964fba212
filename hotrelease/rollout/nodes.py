"""Talking to the node agents: the interface the rollout drives every node through (its
answers are the agent's typed wire models, `agent.wire`), one call with retries, what each
node runs now, read concurrently, and what came of one node in a stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from hotrelease.agent.wire import (
    ActivateResult,
    AdvisoryResult,
    ApprovalResult,
    HistoryRecord,
    InProgress,
    PluginStatus,
    UploadResult,
)
from hotrelease.config.inventory import RolloutSettings
from hotrelease.errors import HotreleaseError, UnreachableError
from hotrelease.trust.manifest import ReleaseManifest

# The code the agent answers a read of a plugin slot it does not have with.
UNKNOWN_PLUGIN = "unknown_plugin"


class AgentAPI(Protocol):
    """What `agent.client.AgentClient` offers (and `tests/fakeagent.FakeAgent`)."""

    def plugin(self, name: str) -> PluginStatus: ...
    def upload(self, manifest_path: Path, signature_path: Path,
               bundle_path: Path) -> UploadResult: ...
    def activate(self, name: str, version: str, *, stage: str | None = None,
                 release_id: str | None = None, pipeline_url: str | None = None,
                 approval: dict[str, Any] | None = None,
                 reason: str | None = None, timeout: float | None = None) -> ActivateResult: ...
    def rollback(self, name: str, version: str | None = None, *, stage: str | None = None,
                 pipeline_url: str | None = None, reason: str | None = None,
                 approval: dict[str, Any] | None = None, allow_expired: bool = False,
                 timeout: float | None = None) -> ActivateResult: ...
    def history(self, name: str) -> list[HistoryRecord]: ...
    def post_approval(self, name: str, approval: dict[str, Any],
                      envelope: dict[str, Any] | None) -> ApprovalResult: ...
    def post_label(self, name: str, label: dict[str, Any],
                   envelope: dict[str, Any]) -> AdvisoryResult: ...


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
    busy: InProgress | None = None  # an activation or rollback under way on the agent


@dataclass
class NodeOutcome:
    node: str
    stage: str
    result: str  # activated | already | rolled_back | failed | unreachable | reverted | planned
    version: str | None = None
    detail: str = ""
    code: str | None = None  # the agent's error code, when it answered with a refusal

    @classmethod
    def of_error(cls, node: str, stage: str, version: str | None, exc: HotreleaseError,
                 detail: str | None = None) -> NodeOutcome:
        """"unreachable" when no answer came, else "failed" with the agent's code."""
        if isinstance(exc, UnreachableError):
            return cls(node, stage, "unreachable", version, detail or str(exc))
        return cls(node, stage, "failed", version, detail or str(exc), code=exc.code)


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
            if exc.code == UNKNOWN_PLUGIN:  # no such slot there: it runs nothing of it
                return NodeState(name, True)
            return NodeState(name, True, error=str(exc))
        return NodeState(name, True, info.current, info.previous, info.state,
                         info.health.verdict if info.health else None, info.activated_at,
                         busy=info.in_progress)

    with ThreadPoolExecutor(max_workers=max(1, min(settings.concurrency, len(names)))) as pool:
        return {s.node: s for s in pool.map(one, names)}


def recorded_approval(clients: dict[str, AgentAPI], nodes: Sequence[str],
                      manifest: ReleaseManifest, stage: str, now: Callable[[], datetime]
                      ) -> tuple[dict[str, Any] | None, str | None]:
    """The approval of `stage` for this build recorded in the history of any of `nodes`
    (the fleet is the ledger), with its envelope: ({"approval", "envelope"}, None). It
    counts if it is for this build and stage, names every node of the stage and has not
    expired. None when there is none, with why the last candidate did not count."""
    from hotrelease.trust.approvals import Approval, check_approval  # only when needed

    problem = None
    digest = manifest.bundle.sha256
    for name in nodes:
        try:
            records = clients[name].history(manifest.name)
        except HotreleaseError:
            continue
        for record in reversed(records):
            approval = record.approval
            if not (record.action == "approval" and approval is not None
                    and approval.get("stage") == stage
                    and approval.get("bundle_sha256") == digest
                    and approval.get("version") == manifest.version):
                continue
            try:
                parsed = Approval.from_dict(approval)
                for node in nodes:
                    check_approval(parsed, name=manifest.name, version=manifest.version,
                                   bundle_sha256=digest, stage=stage, now=now(), node=node)
            except HotreleaseError as exc:
                problem = str(exc)
                continue
            return {"approval": approval, "envelope": record.envelope}, None
    return None, problem
