"""The agent's HTTP JSON, typed: one model per answer, shared by the agent (which builds its
answers from them) and the client (which parses every answer into them).

In the manner of python-tuf's `tuf.api` models: frozen dataclasses with a strict
`from_dict` (a field of the wrong type or a missing one raises `BadResponseError` naming
its path) and a `to_dict` that is the JSON the agent sends (`agent.wiremodel` has the
rules). A field annotated `X | None` may be null or missing; any other is required. Fields
a model does not name are kept and given back unchanged, and a parsed model keeps its key
order, so the agent's answers stay byte for byte what they were. Every model is a
read-only `Mapping` over its JSON as well (`status["current"]`), for callers that read an
answer by key; the rollout reads the typed fields.

Standard library only, on purpose: the client runs inside every `hotrelease` command, which
must not pay for importing pydantic (the FastAPI request models stay in `agent.app`).
Imports nothing but `hotrelease.errors` (through `agent.wiremodel`); anyone may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hotrelease.agent.wiremodel import WireModel, omitted_if_none, wire_name

# Request headers of the streamed upload (HTTP header names are case-insensitive).
MANIFEST_HEADER = "x-hotrelease-manifest"  # base64 of the manifest.json bytes
SIGNATURE_HEADER = "x-hotrelease-signature"  # base64 of the manifest.json.sig bytes

# --- errors and liveness ----------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class ErrorDetail(WireModel):
    code: str  # stable, machine-readable: bad_signature, not_stored, ...
    message: str


@dataclass(frozen=True, eq=False, kw_only=True)
class ErrorBody(WireModel):
    """Every error answer: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail

    @classmethod
    def of(cls, code: str, message: str) -> ErrorBody:
        return cls(error=ErrorDetail(code=code, message=message))


@dataclass(frozen=True, eq=False, kw_only=True)
class AgentHealth(WireModel):
    """GET /v1/health (no token needed)."""

    ok: bool
    agent: str
    version: str


# --- a plugin slot ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class Health(WireModel):
    """One health verdict: the check after a switch, or after going back."""

    ok: bool | None = None
    status: str  # "pass" | "fail" (anything else, e.g. a hand-edited state: neither)
    detail: str | None = None
    probes: int | None = None
    version: str | None = None
    checked_at: str | None = None

    @property
    def verdict(self) -> str | None:
        """"pass", "fail", or None when the status is neither."""
        return self.status if self.status in ("pass", "fail") else None


@dataclass(frozen=True, eq=False, kw_only=True)
class InProgress(WireModel):
    """The activation or rollback under way on a slot (`version` None: to the previous)."""

    action: str  # "activate" | "rollback"
    version: str | None
    since: str
    release_id: str | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class LastFailure(WireModel):
    """The last version that failed its health check here and was rolled back."""

    version: str | None = None
    reason: str | None = None
    at: str | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class PluginState(WireModel):
    """A slot's state as the agent keeps it (state.json): what runs, what ran before."""

    name: str
    current: str | None = None
    previous: str | None = None
    state: str  # empty | active | rolled_back | unhealthy
    activated_at: str | None = None
    highest_activated: str | None = None
    health: Health | None = None
    last_result: str | None = None
    ran: list[str] | None = omitted_if_none()  # live here after passing a health check
    release_id: str | None = omitted_if_none()
    last_failure: LastFailure | None = omitted_if_none()


@dataclass(frozen=True, eq=False, kw_only=True)
class PluginStatus(PluginState):
    """GET /v1/plugins/{name} (and each of GET /v1/plugins): the state, what is stored, the
    security floor (`security_floor_problem`: why it is unknown) and the activation under
    way."""

    stored: list[str]
    security_floor: str | None = None
    security_floor_advisory: str | None = None
    security_floor_problem: str | None = omitted_if_none()
    current_link: str | None = None
    in_progress: InProgress | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class PluginList(WireModel):
    """GET /v1/plugins."""

    plugins: list[PluginStatus]


# --- releases ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class StoredRelease(WireModel):
    """GET /v1/plugins/{name}/releases/{version}: a release stored on the node."""

    name: str
    version: str
    release_id: str
    bundle_sha256: str
    bundle_size: int
    kind: str
    expires: str | None
    path: str


@dataclass(frozen=True, eq=False, kw_only=True)
class UploadResult(StoredRelease):
    """PUT /v1/plugins/{name}/releases/{version}: "stored" (201, with timings) or
    "unchanged" (200: this exact release was already stored)."""

    status: str
    timings: dict[str, float] | None = omitted_if_none()

    _ORDER = ("status", "name", "version", "release_id", "bundle_sha256", "bundle_size",
              "kind", "expires", "path", "timings")

    @classmethod
    def of(cls, status: str, release: StoredRelease,
           timings: dict[str, float] | None = None) -> UploadResult:
        return cls(status=status, timings=timings, name=release.name,
                   version=release.version, release_id=release.release_id,
                   bundle_sha256=release.bundle_sha256, bundle_size=release.bundle_size,
                   kind=release.kind, expires=release.expires, path=release.path)


# --- activation -------------------------------------------------------------------------

# The JSON keys each `result` of an activation or rollback carries.
_ACTIVATE_KEYS = {
    "unchanged": {"result", "name", "version", "current", "state"},
    "activated": {"result", "name", "version", "from", "current", "health", "timings",
                  "state"},
    "failed": {"result", "name", "version", "from", "current", "reason", "health",
               "timings", "state"},
    "rolled_back": {"result", "name", "version", "from", "current", "reason", "health",
                    "rollback_health", "timings", "state"},
}


@dataclass(frozen=True, eq=False, kw_only=True)
class ActivateResult(WireModel):
    """POST /v1/plugins/{name}/activate and /rollback. `result`: "activated", "unchanged",
    "rolled_back" (the health check failed and the agent went back by itself) or "failed"
    (it failed and going back was refused: the node stays on `version`, unhealthy). The
    last two are answers, not errors: the agent did its job."""

    result: str
    name: str
    version: str
    from_version: str | None = wire_name("from")
    current: str | None
    reason: str | None = None
    health: Health | None = None
    rollback_health: Health | None = None
    timings: dict[str, float] | None = None
    state: PluginState

    def _absent(self) -> set[str]:
        keys = _ACTIVATE_KEYS.get(self.result)
        return set() if keys is None else {s.wire for s in self._fields()} - keys


# --- advisories and approvals -------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class AdvisoryResult(WireModel):
    """POST /v1/plugins/{name}/advisories: the label "recorded" (or already "known") and the
    security floor now (`floor_problem`: why it is unknown)."""

    status: str
    name: str
    label_id: str
    floor: str | None
    floor_advisory: str | None
    floor_problem: str | None = omitted_if_none()


@dataclass(frozen=True, eq=False, kw_only=True)
class ApprovalResult(WireModel):
    """POST /v1/plugins/{name}/approvals: recorded; `verified` when approver keys checked it."""

    status: str
    name: str
    stage: str
    verified: bool


# --- history ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class HistoryRecord(WireModel):
    """One append-only audit record. Typed: what a record says (when, what, who, with which
    result and code) and what the publisher reads back (approvals and their envelopes); the
    rest (timings, hook details, ...) is in `unrecognized_fields`. Every field may be missing
    (the log is kept as written, by whichever version wrote it); one that is there has its
    type."""

    time: str | None = omitted_if_none()
    action: str | None = omitted_if_none()
    result: str | None = omitted_if_none()
    who: str | None = omitted_if_none()
    version: str | None = omitted_if_none()
    stage: str | None = omitted_if_none()
    code: str | None = omitted_if_none()
    reason: str | None = omitted_if_none()
    release_id: str | None = omitted_if_none()
    approval: dict[str, Any] | None = omitted_if_none()
    envelope: dict[str, Any] | None = omitted_if_none()


@dataclass(frozen=True, eq=False, kw_only=True)
class HistoryPage(WireModel):
    """GET /v1/plugins/{name}/history: the newest `limit` records, oldest first."""

    name: str
    records: list[HistoryRecord]
