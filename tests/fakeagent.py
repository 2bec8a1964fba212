"""An in-memory node agent behind the real client interface, for fast Publisher logic tests.

In the spirit of python-tuf's `RepositorySimulator`: `FakeAgent` implements the `AgentAPI`
protocol of `hotrelease.rollout.nodes` (what `hotrelease.agent.client.AgentClient`
offers) and keeps one node's state in memory, deciding the way the real agent's jobs
(`hotrelease.agent.ingest`, `.activation`, `.floor`, `.approvals`) decide and answering
with the JSON shapes the agent sends (`current`, `previous`, `state`, `health`,
`activated_at`, `security_floor`, history records, activate's `result` of "activated" /
"unchanged" / "rolled_back" / "failed"), parsed into the same `hotrelease.agent.wire`
models the real client returns (`PluginStatus`, `ActivateResult`, `HistoryRecord`, ...).

Errors are produced the way the real client produces them: the agent-side exception
(`hotrelease.errors.NotFound`, `Conflict`, `PolicyError`, ...) is turned into an HTTP
status by the real `hotrelease.agent.responses.status_for`, then into the caller's
exception by the real `hotrelease.agent.client.error_from_response`. So an unknown plugin
raises `AgentError` with code "unknown_plugin" (status 404), a downgrade a `PolicyError`
with code "downgrade", a missing release `AgentError` "not_stored", and a network failure
`UnreachableError`.

What the fake does NOT do (the real agent tests cover it):
  * no signature is verified: manifest envelopes, approval envelopes and security-label
    envelopes are only required to be present where the agent requires them;
  * no bundle is extracted and no hook runs: an upload checks the body's size and digest
    against the manifest; the health check is a per-version verdict a test chooses;
  * no disk, no crash recovery, no token authentication.

Knobs a test can set per node:
  * `unreachable = True`, or `unreachable_for(n, method=None)` for the next n calls;
  * `set_verdict(version, "pass" | "fail" | None)`: what the health check says at
    activation ("fail": the agent rolls back by itself and answers "rolled_back"; None: the
    switch completes but the health is neither pass nor fail, status "unknown". The real
    agent always reports pass or fail at activation; None stands for a health source that
    has not settled, which is what the publisher's bake pause is for);
  * `set_reported_health(status)`, or `at(t, fn)` to run such a change when the fake clock
    reaches t (a node going unhealthy during a bake);
  * `refuse(method, exc)`: answer that method with the agent-side exception `exc`
    (for activate: where the precheck hook would refuse, after the built-in checks);
  * `require_signed_approvals`: the analogue of `[trust] approval_keys` (activation needs an
    approval document and an envelope bound to this build and node; the envelope is not
    verified);
  * `accept_labels`: the analogue of `[trust] security_keys` (labels are not verified).
Every call attempt is logged in `calls` as (method, args), reachable or not, and in the
fleet-wide log when the agent belongs to a `FakeFleet`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from hotrelease.agent.client import error_from_response
from hotrelease.agent.responses import status_for
from hotrelease.agent.wire import (
    ActivateResult,
    AdvisoryResult,
    ApprovalResult,
    HistoryPage,
    HistoryRecord,
    PluginStatus,
    UploadResult,
)
from hotrelease.agent.wiremodel import WireModel
from hotrelease.config.inventory import Node, RolloutSettings, StageSpec
from hotrelease.errors import (
    BadRequest,
    Conflict,
    DigestMismatchError,
    ExpiredError,
    HotreleaseError,
    IdentityMismatchError,
    ManifestFormatError,
    NotFound,
    PolicyError,
    SignatureError,
    SizeMismatchError,
    UnreachableError,
    VerificationError,
)
from hotrelease.rollout.engine import Event, Publisher
from hotrelease.rollout.plan import StagePlan, plan_stages
from hotrelease.trust.approvals import Approval, check_approval
from hotrelease.trust.labels import SecurityLabel
from hotrelease.trust.manifest import (
    MANIFEST_FORMAT,
    ReleaseManifest,
    check_name,
    check_version,
    format_time,
    parse_manifest_bytes,
)
from hotrelease.trust.versions import parse_version

PLUGIN = "greeter"
MUTATING = ("upload", "activate", "rollback")

__all__ = ["FakeAgent", "FakeClock", "FakeFleet", "FakeRelease", "PLUGIN"]


class FakeClock:
    """`clock` and `sleep` for the Publisher: sleeping advances the time, costs nothing, and
    is recorded. `wall()` is the matching UTC time, for expiry checks in the agents."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = 0.0
        self.start = start or datetime.now(UTC).replace(microsecond=0)
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += max(seconds, 0.0)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def wall(self) -> datetime:
        with self._lock:
            return self.start + timedelta(seconds=self.now)


M = TypeVar("M", bound=WireModel)


def _wire(obj: Any) -> Any:
    """What the caller gets after a JSON round trip: no aliasing of the agent's state."""
    return json.loads(json.dumps(obj, default=str))


def _answer(model: type[M], obj: Any) -> M:
    """What the real client returns: the JSON answer parsed into its wire model."""
    return model.from_dict(_wire(obj))


def _below(a: str, b: str) -> bool:
    return bool(parse_version(a) < parse_version(b))


def _health(status: str | None, version: str, detail: str, at: str) -> dict[str, Any]:
    return {"ok": {"pass": True, "fail": False}.get(status or "", None),
            "status": status or "unknown", "detail": detail,
            "probes": 0 if status is None else 1, "version": version, "checked_at": at}


class FakeAgent:
    def __init__(self, node: str, url: str, *, plugins: Iterable[str] = (PLUGIN,),
                 clock: FakeClock | None = None,
                 fleet_log: list[tuple[str, str, tuple[Any, ...]]] | None = None,
                 fleet_lock: threading.Lock | None = None) -> None:
        self.node = node
        self.url = url
        self.clock = clock or FakeClock()
        self.plugins = set(plugins)
        # knobs
        self.unreachable = False
        self.verdicts: dict[str, str | None] = {}
        self.require_signed_approvals = False
        self.accept_labels = False
        self._unreachable_next: list[tuple[int, str | None]] = []
        self._refusals: dict[str, HotreleaseError] = {}
        self._scheduled: list[tuple[float, Callable[[FakeAgent], None]]] = []
        # observable
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._fleet_log = fleet_log
        self._fleet_lock = fleet_lock or threading.Lock()
        # state, per plugin (what the real agent keeps on disk)
        self._states: dict[str, dict[str, Any]] = {}
        self._stored: dict[str, dict[str, dict[str, Any]]] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._floors: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.RLock()

    # --- knobs ----------------------------------------------------------------------------
    def unreachable_for(self, n: int, method: str | None = None) -> None:
        """The next `n` calls (of `method`, or of any method) get no answer."""
        self._unreachable_next.append((n, method))

    def set_verdict(self, version: str, verdict: str | None) -> None:
        if verdict not in ("pass", "fail", None):
            raise ValueError(f"verdict must be 'pass', 'fail' or None, not {verdict!r}")
        self.verdicts[version] = verdict

    def refuse(self, method: str, exc: HotreleaseError | None) -> None:
        """Answer `method` with the agent-side error `exc` (None: stop refusing)."""
        if exc is None:
            self._refusals.pop(method, None)
        else:
            self._refusals[method] = exc

    def at(self, t: float, fn: Callable[[FakeAgent], None]) -> None:
        """Run `fn(self)` before the first call made once the fake clock reaches `t`."""
        self._scheduled.append((t, fn))

    def set_reported_health(self, status: str | None, name: str = PLUGIN) -> None:
        """What the node reports as health of its current version from now on."""
        with self._lock:
            state = self._state(name)
            state["health"] = _health(status, state["current"], "fake: health changed",
                                      self._now_text())

    # --- reading the fake directly (not through the API: logs nothing) ---------------------
    def current(self, name: str = PLUGIN) -> str | None:
        with self._lock:
            return self._state(name)["current"]

    def records(self, name: str = PLUGIN) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._history.get(name, []))

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    # --- AgentAPI ---------------------------------------------------------------------------
    def plugin(self, name: str) -> PluginStatus:
        with self._enter("plugin", name):
            self._plugin(name)
            return _answer(PluginStatus, self._view(name))

    def history(self, name: str, limit: int = 200) -> list[HistoryRecord]:
        with self._enter("history", name, limit):
            self._plugin(name)
            page = {"name": name, "records": self._history.get(name, [])[-limit:]}
            return _answer(HistoryPage, page).records

    def upload(self, manifest_path: Path, signature_path: Path | None = None,
               bundle_path: Path | None = None) -> UploadResult:
        manifest_path = Path(manifest_path)
        data = manifest_path.read_bytes()  # the client reads these before sending
        try:
            doc = json.loads(data)
            name, version = doc["name"], doc["version"]
            bundle = Path(bundle_path) if bundle_path else \
                manifest_path.parent / doc["bundle"]["filename"]
        except (ValueError, KeyError, TypeError):
            raise ManifestFormatError(f"{manifest_path}: not a release manifest") from None
        sig = Path(signature_path) if signature_path else Path(f"{manifest_path}.sig")
        sig.read_bytes()
        body = bundle.read_bytes()
        with self._enter("upload", name, version):
            self._plugin(name, action="upload")
            record: dict[str, Any] = {"action": "upload", "who": "ci", "version": version}
            self._check_version(name, version, record)
            try:
                raw, _ = parse_manifest_bytes(data, "manifest header")
                manifest = ReleaseManifest.from_dict(raw)
                if (manifest.name, manifest.version) != (name, version):
                    raise IdentityMismatchError("manifest is for another release")
                manifest.check_not_expired(self.clock.wall())
            except VerificationError as exc:
                raise self._refused(name, record, exc) from None
            record.update({"release_id": manifest.release_id,
                           "bundle_sha256": manifest.bundle.sha256})
            self._maybe_refuse("upload", name, record)
            existing = self._stored.get(name, {}).get(version)
            if existing is not None and existing["bundle_sha256"] != manifest.bundle.sha256:
                raise self._refused(name, record, Conflict(
                    f"{manifest.release_id} is already stored with another bundle digest "
                    f"({existing['bundle_sha256'][:12]}); versions are immutable",
                    code="version_conflict"))
            if len(body) != manifest.bundle.size:
                raise self._refused(name, record, SizeMismatchError(
                    f"body is {len(body)} bytes, the manifest declares {manifest.bundle.size}"))
            if hashlib.sha256(body).hexdigest() != manifest.bundle.sha256:
                raise self._refused(name, record, DigestMismatchError(
                    "uploaded bundle: sha256 does not match the manifest"))
            if existing is not None:
                self._append(name, {**record, "result": "unchanged"})
                return _answer(UploadResult, {"status": "unchanged", **existing})
            info = {"name": name, "version": version, "release_id": manifest.release_id,
                    "bundle_sha256": manifest.bundle.sha256,
                    "bundle_size": manifest.bundle.size, "kind": manifest.kind,
                    "expires": raw.get("expires"),
                    "path": f"/fake/{self.node}/releases/{name}/{version}"}
            self._stored.setdefault(name, {})[version] = info
            self._append(name, {**record, "result": "stored",
                                "bundle_size": manifest.bundle.size})
            return _answer(UploadResult, {"status": "stored", **info, "timings": {}})

    def activate(self, name: str, version: str, *, stage: str | None = None,
                 release_id: str | None = None, pipeline_url: str | None = None,
                 approval: dict[str, Any] | None = None, reason: str | None = None,
                 timeout: float | None = None) -> ActivateResult:
        meta = {"stage": stage, "release_id": release_id, "pipeline_url": pipeline_url,
                "approval": approval, "reason": reason}
        with self._enter("activate", name, version, _drop_none(meta)):
            return _answer(ActivateResult,
                           self._activate(name, version, _drop_none(meta), rollback=False))

    def rollback(self, name: str, version: str | None = None, *, stage: str | None = None,
                 pipeline_url: str | None = None, reason: str | None = None,
                 approval: dict[str, Any] | None = None, allow_expired: bool = False,
                 timeout: float | None = None) -> ActivateResult:
        meta = {"stage": stage, "pipeline_url": pipeline_url, "reason": reason,
                "approval": approval, "override": "allow_expired" if allow_expired else None}
        with self._enter("rollback", name, version, _drop_none(meta)):
            return _answer(ActivateResult,
                           self._activate(name, version, _drop_none(meta), rollback=True))

    def post_approval(self, name: str, approval: dict[str, Any],
                      envelope: dict[str, Any] | None = None) -> ApprovalResult:
        with self._enter("post_approval", name, approval.get("stage")):
            self._plugin(name, action="approval")
            record: dict[str, Any] = {"action": "approval", "who": "ci"}
            self._maybe_refuse("post_approval", name, record)
            try:
                parsed = Approval.from_dict(approval)
                record.update({"version": parsed.version, "stage": parsed.stage})
                if parsed.name != name:
                    raise IdentityMismatchError(f"approval is for plugin {parsed.name!r}, "
                                                f"not {name!r}")
                if self.clock.wall() >= parsed.expires:
                    raise ExpiredError(f"approval for stage {parsed.stage} has expired")
                if self.require_signed_approvals and envelope is None:
                    raise SignatureError("this agent requires approvals signed by an "
                                         "approver key; the approval has no signature")
            except (VerificationError, ValueError) as exc:
                error = exc if isinstance(exc, VerificationError) else ManifestFormatError(
                    f"approval: {exc}")
                raise self._refused(name, record, error) from None
            verified = self.require_signed_approvals  # (taken on trust: no crypto here)
            # As agent.approvals.Approvals.record records it, envelope included.
            self._append(name, {**record, "result": "recorded", "approval": approval,
                                "envelope": copy.deepcopy(envelope),
                                "signed": envelope is not None, "verified": verified})
            return _answer(ApprovalResult, {"status": "recorded", "name": name,
                                            "stage": parsed.stage, "verified": verified})

    def post_label(self, name: str, label: dict[str, Any],
                   envelope: dict[str, Any]) -> AdvisoryResult:
        with self._enter("post_label", name, label.get("version")):
            self._plugin(name, action="advisory")
            record: dict[str, Any] = {"action": "advisory", "who": "ci"}
            if not self.accept_labels:
                raise self._refused(name, record, SignatureError(
                    "this agent has no security keys configured; it cannot accept labels"))
            try:
                checked = SecurityLabel.from_dict(label)
                if checked.name != name:
                    raise IdentityMismatchError(f"security label is for plugin "
                                                f"{checked.name!r}, not {name!r}")
                if self.clock.wall() >= checked.expires:
                    raise ExpiredError(f"security label {checked.label_id} expired")
            except VerificationError as exc:
                raise self._refused(name, record, exc) from None
            record.update({"version": checked.version, "advisory": checked.advisory,
                           "severity": checked.severity})
            info = self._stored.get(name, {}).get(checked.version)
            if info is not None and info["bundle_sha256"] != checked.bundle_sha256:
                raise self._refused(name, record, IdentityMismatchError(
                    f"label is for a different bundle than the stored {name}@"
                    f"{checked.version}"))
            seen = self._floors.setdefault(name, [])
            status = "known" if (checked.version, checked.advisory) in seen else "recorded"
            if status == "recorded":
                seen.append((checked.version, checked.advisory))
            floor, advisory = self._floor(name)
            self._append(name, {**record, "result": status, "floor": floor})
            return _answer(AdvisoryResult, {"status": status, "name": name,
                                            "label_id": checked.label_id, "floor": floor,
                                            "floor_advisory": advisory})

    # --- the agent's decisions (agent.activation: _activate_locked, _switch, _auto_rollback)
    def _activate(self, name: str, version: str | None, meta: dict[str, Any], *,
                  rollback: bool) -> dict[str, Any]:
        action = "rollback" if rollback else "activate"
        self._plugin(name, action=action)
        record: dict[str, Any] = {"action": action, "who": "ci", **meta}
        state = self._state(name)
        old = state["current"]
        if version is None:
            version = state["previous"]
            if version is None:
                raise self._refused(name, record, Conflict(
                    f"{name} has no previous version to roll back to",
                    code="nothing_to_roll_back"))
        record.update({"version": version, "from": old})
        self._check_version(name, version, record)
        info = self._stored.get(name, {}).get(version)
        if info is None:
            raise self._refused(name, record, NotFound(
                f"{name}@{version} is not stored on this node (upload it first)",
                code="not_stored"))
        record["release_id"] = info["release_id"]
        floor, advisory = self._floor(name)
        if floor is not None and _below(version, floor):
            raise self._refused(name, record, PolicyError(
                f"{name}@{version} is below the security floor {floor} ({advisory})",
                code="below_security_floor"))
        if version == old:
            self._append(name, {**record, "result": "unchanged",
                                "reason": "already the current version"})
            return {"result": "unchanged", "name": name, "version": version,
                    "current": version, "state": state}
        highest = state["highest_activated"]
        if not rollback and highest is not None and _below(version, highest):
            raise self._refused(name, record, PolicyError(
                f"{name}@{version} is lower than {highest}, already activated on this node; "
                "use the rollback endpoint to go back to a stored version", code="downgrade"))
        if not rollback:
            self._check_approval(name, version, info["bundle_sha256"], record)
        self._maybe_refuse(action, name, record)  # where the precheck hook would refuse
        return self._switch(name, state, old, version, record)

    def _check_approval(self, name: str, version: str, digest: str,
                        record: dict[str, Any]) -> None:
        if not self.require_signed_approvals:
            return
        given = record.get("approval")
        if not isinstance(given, dict) or not isinstance(given.get("approval"), dict) \
                or not isinstance(given.get("envelope"), dict):
            raise self._refused(name, record, PolicyError(
                f"this node requires a signed stage approval to activate {name}@{version}",
                code="approval_required"))
        try:  # the binding checks of verify_signed_approval; the signature is not checked
            check_approval(Approval.from_dict(given["approval"]), name=name, version=version,
                           bundle_sha256=digest, stage=None, now=self.clock.wall(),
                           node=self.node)
        except VerificationError as exc:
            raise self._refused(name, record, exc) from None

    def _switch(self, name: str, state: dict[str, Any], old: str | None, new: str,
                record: dict[str, Any]) -> dict[str, Any]:
        verdict = self.verdicts.get(new, "pass")
        now = self._now_text()
        detail = {"pass": "fake: healthy", "fail": "fake: unhealthy",
                  None: "fake: no verdict yet"}[verdict]
        health = _health(verdict, new, detail, now)
        if verdict != "fail":
            highest = state["highest_activated"]
            state.update({
                "current": new, "previous": old, "state": "active", "activated_at": now,
                "highest_activated": new if highest is None or _below(highest, new)
                else highest,
                "health": health, "last_result": "activated",
                "release_id": record.get("release_id")})
            self._append(name, {**record, "result": "activated", "reason": detail,
                                "timings": {}})
            return {"result": "activated", "name": name, "version": new, "from": old,
                    "current": new, "health": health, "timings": {}, "state": state}
        reason = f"health check failed: {detail}"
        floor, advisory = self._floor(name)
        if old is not None and floor is not None and _below(old, floor):
            state.update({"current": new, "previous": old, "state": "unhealthy",
                          "activated_at": now, "health": health, "last_result": "failed"})
            why = (f"{reason}; automatic rollback to {old} refused: below the security "
                   f"floor {floor} ({advisory})")
            self._append(name, {**record, "result": "failed", "code": "below_security_floor",
                                "reason": why})
            return {"result": "failed", "name": name, "version": new, "from": old,
                    "current": new, "reason": why, "health": health, "timings": {},
                    "state": state}
        back_health = None
        if old is not None:
            back = self.verdicts.get(old, "pass")
            back_health = _health(back, old, "fake: back on the previous version", now)
        state.update({"current": old, "state": "rolled_back" if old is not None else "empty",
                      "health": back_health or health, "last_result": "rolled_back",
                      "last_failure": {"version": new, "reason": reason, "at": now}})
        self._append(name, {**record, "result": "rolled_back", "reason": reason,
                            "rolled_back_to": old, "rollback_health": back_health})
        return {"result": "rolled_back", "name": name, "version": new, "from": old,
                "current": old, "reason": reason, "health": health,
                "rollback_health": back_health, "timings": {}, "state": state}

    # --- plumbing ----------------------------------------------------------------------------
    def _enter(self, method: str, *args: Any) -> _Call:
        return _Call(self, method, args)

    def _before(self, method: str, args: tuple[Any, ...]) -> None:
        """Under the agent lock: log the attempt, run what is due, maybe drop the call."""
        self.calls.append((method, args))
        if self._fleet_log is not None:
            with self._fleet_lock:
                self._fleet_log.append((self.node, method, args))
        due = [item for item in self._scheduled if self.clock() >= item[0]]
        for item in due:
            self._scheduled.remove(item)
            item[1](self)
        down = self.unreachable
        for i, (n, only) in enumerate(self._unreachable_next):
            if n > 0 and only in (None, method):
                self._unreachable_next[i] = (n - 1, only)
                down = True
                break
        if down:
            raise UnreachableError(f"agent {self.url}: ConnectionError: fake: no route to "
                                   f"{self.node}")

    def _as_client_error(self, exc: HotreleaseError) -> HotreleaseError:
        body = {"error": {"code": exc.code, "message": str(exc)}}
        return error_from_response(self.url, status_for(exc), body)

    def _plugin(self, name: str, action: str = "request") -> None:
        try:
            check_name(name)
        except ManifestFormatError as exc:
            raise BadRequest(str(exc), code="bad_name") from None
        if name not in self.plugins:
            raise NotFound(f"plugin {name!r} is not configured on this agent",
                           code="unknown_plugin")

    def _check_version(self, name: str, version: str, record: dict[str, Any]) -> None:
        try:
            check_version(version)
        except ManifestFormatError as exc:
            raise self._refused(name, record, BadRequest(str(exc), code="bad_version")) \
                from None

    def _maybe_refuse(self, method: str, name: str, record: dict[str, Any]) -> None:
        exc = self._refusals.get(method)
        if exc is not None:
            raise self._refused(name, record, exc)

    def _refused(self, name: str, record: dict[str, Any],
                 exc: HotreleaseError) -> HotreleaseError:
        self._append(name, {**record, "result": "refused", "code": exc.code,
                            "reason": str(exc)})
        return exc

    def _state(self, name: str) -> dict[str, Any]:
        return self._states.setdefault(name, {
            "name": name, "current": None, "previous": None, "state": "empty",
            "activated_at": None, "highest_activated": None, "health": None,
            "last_result": None})

    def _view(self, name: str) -> dict[str, Any]:
        state = self._state(name)
        floor, advisory = self._floor(name)
        return {**state, "name": name, "stored": sorted(self._stored.get(name, {})),
                "security_floor": floor, "security_floor_advisory": advisory,
                "current_link": state["current"], "in_progress": None}

    def _floor(self, name: str) -> tuple[str | None, str | None]:
        best: tuple[str | None, str | None] = (None, None)
        for version, advisory in self._floors.get(name, []):
            if best[0] is None or _below(best[0], version):
                best = (version, advisory)
        return best

    def _append(self, name: str, record: dict[str, Any]) -> None:
        self._history.setdefault(name, []).append(
            _wire({"time": self._now_text(), **record}))

    def _now_text(self) -> str:
        return self.clock.wall().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Call:
    """One API call: the agent's lock held, the attempt logged, agent-side errors turned into
    what the real client raises."""

    def __init__(self, agent: FakeAgent, method: str, args: tuple[Any, ...]) -> None:
        self.agent, self.method, self.args = agent, method, args

    def __enter__(self) -> None:
        self.agent._lock.acquire()
        try:
            self.agent._before(self.method, self.args)
        except BaseException:
            self.agent._lock.release()
            raise

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> Literal[False]:
        self.agent._lock.release()
        if isinstance(exc, HotreleaseError) and not isinstance(exc, UnreachableError):
            raise self.agent._as_client_error(exc) from None
        return False


def _drop_none(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if v is not None}


# --- a fleet --------------------------------------------------------------------------------


@dataclass
class FakeRelease:
    manifest: ReleaseManifest
    manifest_path: Path
    signature_path: Path
    bundle_path: Path

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.manifest_path, self.signature_path, self.bundle_path


class FakeFleet:
    """N nodes (`rollout.Node`), their FakeAgents, one fake clock, and Publishers."""

    def __init__(self, directory: Path, n: int = 6, *, plugin: str = PLUGIN,
                 settings: RolloutSettings | None = None) -> None:
        self.directory = Path(directory)
        self.plugin = plugin
        self.clock = FakeClock()
        self.settings = settings or RolloutSettings(concurrency=4, retries=2,
                                                    retry_backoff=0.5, poll_interval=5.0)
        self.nodes = [Node(f"node-{i}", f"http://node-{i}.fake:7800") for i in range(n)]
        self.log: list[tuple[str, str, tuple[Any, ...]]] = []
        lock = threading.Lock()
        self.agents = {node.name: FakeAgent(node.name, node.url, plugins=(plugin,),
                                            clock=self.clock, fleet_log=self.log,
                                            fleet_lock=lock)
                       for node in self.nodes}
        self.events: list[Event] = []

    # --- releases -------------------------------------------------------------------------
    def release(self, version: str, *, content: bytes | None = None,
                expires_in: timedelta = timedelta(days=30)) -> FakeRelease:
        """A real ReleaseManifest (through `from_dict`) with its files on disk: the bundle
        bytes are arbitrary (the fake does not extract), the signature is a placeholder."""
        body = content if content is not None else f"bundle of {version}".encode()
        inner = b"print('hello from " + version.encode() + b"')\n"
        filename = f"{self.plugin}-{version}.tar.gz"
        doc = {"format": MANIFEST_FORMAT, "name": self.plugin, "version": version,
               "kind": "python",
               "bundle": {"filename": filename, "sha256": hashlib.sha256(body).hexdigest(),
                          "size": len(body)},
               "files": [{"path": "plugin.py", "sha256": hashlib.sha256(inner).hexdigest(),
                          "size": len(inner)}],
               "expires": format_time(self.clock.wall() + expires_in)}
        manifest = ReleaseManifest.from_dict(doc)
        folder = self.directory / f"{version}-{manifest.bundle.sha256[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / f"{self.plugin}-{version}.manifest.json"
        manifest.save(manifest_path)
        signature_path = Path(f"{manifest_path}.sig")
        signature_path.write_text(json.dumps({"format": "fake", "signatures": []}))
        bundle_path = folder / filename
        bundle_path.write_bytes(body)
        return FakeRelease(manifest, manifest_path, signature_path, bundle_path)

    def install(self, release: FakeRelease, nodes: Iterable[str] | None = None) -> None:
        """Put a release on nodes as an earlier run would have (upload + activate through the
        API), then forget those calls (the nodes' history keeps them)."""
        for name in nodes if nodes is not None else self.agents:
            agent = self.agents[name]
            agent.upload(*release.paths)
            result = agent.activate(self.plugin, release.version, stage="setup",
                                    release_id=release.manifest.release_id)
            assert result.result in ("activated", "unchanged"), result
        self.forget_calls()

    def approve(self, release: FakeRelease, stage: str, plans: list[StagePlan], *,
                by: str = "alice", nodes: Iterable[str] | None = None,
                digest: str | None = None, version: str | None = None,
                valid: timedelta = timedelta(hours=72),
                envelope: dict[str, Any] | None = None) -> dict[str, Any]:
        """What `hotrelease approve` posts (to every node by default); `digest`/`version`
        override what the approval is bound to."""
        stage_nodes = next(p.nodes for p in plans if p.name == stage)
        now = self.clock.wall()
        approval = Approval(self.plugin, version or release.version,
                            digest or release.manifest.bundle.sha256, stage, by, now,
                            now + valid, stage_nodes).to_dict()
        for name in nodes if nodes is not None else self.agents:
            self.agents[name].post_approval(self.plugin, approval, envelope)
        self.forget_calls()
        return approval

    # --- plans and publishers -------------------------------------------------------------
    def plans(self, release: FakeRelease, stages: list[StageSpec]) -> list[StagePlan]:
        return plan_stages(release.manifest.release_id, self.nodes, stages)

    def publisher(self, release: FakeRelease, *, lane: str = "scheduled",
                  settings: RolloutSettings | None = None) -> Publisher:
        return Publisher(release.manifest, *release.paths, self.nodes, dict(self.agents),
                         settings or self.settings, lane=lane, emit=self.events.append,
                         sleep=self.clock.sleep, clock=self.clock, now=self.clock.wall,
                         wall=self.clock.wall,
                         meta={"pipeline_url": "https://ci.example/pipelines/1"})

    # --- observing --------------------------------------------------------------------------
    def versions(self) -> dict[str, str | None]:
        return {name: agent.current(self.plugin) for name, agent in self.agents.items()}

    def calls(self, *methods: str, node: str | None = None) -> list[tuple[str, str]]:
        """(node, method) of every call attempt so far, in order, optionally filtered."""
        return [(n, m) for n, m, _ in list(self.log)
                if (not methods or m in methods) and (node is None or n == node)]

    def touched(self, *methods: str) -> set[str]:
        """Nodes that got at least one call of these methods (default: upload, activate,
        rollback)."""
        return {n for n, _ in self.calls(*(methods or MUTATING))}

    def forget_calls(self) -> None:
        self.log.clear()
        for agent in self.agents.values():
            agent.calls.clear()
        self.events.clear()
