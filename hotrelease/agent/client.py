"""A small client for the agent API (used by `publish` to drive agents).

Every answer is parsed into its `agent.wire` model (strictly: an answer that is not what the
agent sends raises `BadResponseError`). Every agent error comes back as a `HotreleaseError`
subclass carrying the agent's machine code; network failures become `UnreachableError`.
Uploads stream the bundle from disk.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, TypeVar

import requests

from hotrelease import errors as E
from hotrelease.agent.wire import (
    MANIFEST_HEADER,
    SIGNATURE_HEADER,
    ActivateResult,
    AdvisoryResult,
    AgentHealth,
    ApprovalResult,
    ErrorBody,
    HistoryPage,
    HistoryRecord,
    PluginList,
    PluginStatus,
    StoredRelease,
    UploadResult,
)
from hotrelease.agent.wiremodel import WireModel
from hotrelease.trust.manifest import signature_path_for

M = TypeVar("M", bound=WireModel)

_BY_CODE: dict[str, type[E.HotreleaseError]] = {
    cls.code: cls for cls in (
        E.ManifestFormatError, E.SignatureError, E.ThresholdError, E.DigestMismatchError,
        E.SizeMismatchError, E.ExpiredError, E.IdentityMismatchError, E.UnsafeArchiveError,
        E.VerificationError)
}
_POLICY_CODES = {"downgrade", "below_security_floor"}


def error_from_response(url: str, status: int, body: Any) -> E.HotreleaseError:
    """The exception for an error answer (`body` as parsed JSON, None if it was not JSON):
    refusals with a class of their own get it, any other code an `AgentError`. A body that
    is no `ErrorBody` (a proxy's page, say) is `http_error`."""
    try:
        error = ErrorBody.from_dict(body).error
        code, message = error.code, error.message
    except E.BadResponseError:
        code, message = "http_error", f"HTTP {status}"
    text = f"agent {url}: {message} ({code})"
    if code in _BY_CODE:
        return _BY_CODE[code](text)
    if code in _POLICY_CODES:
        return E.PolicyError(text, code=code)
    if code == E.AdvisoryUnreadable.code:
        return E.AdvisoryUnreadable(text)
    if code == E.TooLarge.code:
        return E.TooLarge(text)
    return E.AgentError(text, code=code, status=status)


class _FileStream:
    """A file-like body that requests streams in chunks (bounded memory)."""

    def __init__(self, path: Path, chunk: int = 1 << 20) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.chunk = chunk

    def __iter__(self):  # type: ignore[no-untyped-def]
        with open(self.path, "rb") as fh:
            while data := fh.read(self.chunk):
                yield data

    def __len__(self) -> int:
        return self.size


class AgentClient:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 connect_timeout: float | None = None, upload_timeout: float = 600.0,
                 verify: bool | str = True, cert: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.upload_timeout = upload_timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        # Passed on every request: a session-level `verify` would lose to REQUESTS_CA_BUNDLE.
        self.verify = verify
        self.cert = cert

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, model: type[M], method: str, path: str, *, timeout: float | None = None,
              **kwargs: Any) -> M:
        """One request; its answer parsed into `model`."""
        url = f"{self.url}{path}"
        try:
            read = timeout or self.timeout
            resp = self.session.request(
                method, url, verify=self.verify, cert=self.cert, **kwargs,
                timeout=(self.connect_timeout, read) if self.connect_timeout else read)
        except requests.RequestException as exc:
            raise E.UnreachableError(f"agent {self.url}: {type(exc).__name__}: {exc}") \
                from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            raise error_from_response(self.url, resp.status_code, body)
        try:
            return model.from_dict(body)
        except E.BadResponseError as exc:
            raise E.BadResponseError(f"agent {self.url}: unexpected answer to {method} {path}: "
                                     f"{exc}") from None

    # --- API -----------------------------------------------------------------------------
    def health(self) -> AgentHealth:
        return self._call(AgentHealth, "GET", "/v1/health")

    def plugins(self) -> list[PluginStatus]:
        return self._call(PluginList, "GET", "/v1/plugins").plugins

    def plugin(self, name: str) -> PluginStatus:
        return self._call(PluginStatus, "GET", f"/v1/plugins/{name}")

    def history(self, name: str, limit: int = 200) -> list[HistoryRecord]:
        return self._call(HistoryPage, "GET", f"/v1/plugins/{name}/history",
                          params={"limit": limit}).records

    def release(self, name: str, version: str) -> StoredRelease | None:
        try:
            return self._call(StoredRelease, "GET", f"/v1/plugins/{name}/releases/{version}")
        except E.AgentError as exc:
            if exc.code == "not_stored":
                return None
            raise

    def upload(self, manifest_path: Path, sig_path: Path | None = None,
               bundle_path: Path | None = None) -> UploadResult:
        """PUT the bundle (streamed from disk) with the signed manifest in two headers."""
        from hotrelease.trust.canonical import strict_loads

        manifest_path = Path(manifest_path)
        data = manifest_path.read_bytes()
        sig = Path(sig_path) if sig_path else signature_path_for(manifest_path)
        try:
            doc = strict_loads(data)
            name, version = doc["name"], doc["version"]
            bundle = Path(bundle_path) if bundle_path else \
                manifest_path.parent / doc["bundle"]["filename"]
        except (ValueError, KeyError, TypeError):
            raise E.ManifestFormatError(f"{manifest_path}: not a release manifest") from None
        headers = {MANIFEST_HEADER: base64.b64encode(data).decode(),
                   SIGNATURE_HEADER: base64.b64encode(sig.read_bytes()).decode(),
                   "Content-Type": "application/octet-stream"}
        # An object with __len__ and __iter__: requests sends Content-Length (not chunked)
        # and iterates it, 1 MiB at a time.
        return self._call(UploadResult, "PUT", f"/v1/plugins/{name}/releases/{version}",
                          headers=headers, data=_FileStream(bundle),
                          timeout=self.upload_timeout)

    def activate(self, name: str, version: str, *, stage: str | None = None,
                 release_id: str | None = None, pipeline_url: str | None = None,
                 approval: dict[str, Any] | None = None, reason: str | None = None,
                 timeout: float | None = None) -> ActivateResult:
        """Returns the agent's answer; `result` is "activated", "unchanged", "rolled_back"
        or "failed" (the last two are not raised: the agent did its job)."""
        body = {k: v for k, v in {"version": version, "stage": stage, "release_id": release_id,
                                  "pipeline_url": pipeline_url, "approval": approval,
                                  "reason": reason}.items() if v is not None}
        return self._call(ActivateResult, "POST", f"/v1/plugins/{name}/activate", json=body,
                          timeout=timeout or max(self.timeout, 120.0))

    def rollback(self, name: str, version: str | None = None, *, stage: str | None = None,
                 pipeline_url: str | None = None, reason: str | None = None,
                 approval: dict[str, Any] | None = None, allow_expired: bool = False,
                 timeout: float | None = None) -> ActivateResult:
        body = {k: v for k, v in {"version": version, "stage": stage,
                                  "pipeline_url": pipeline_url, "reason": reason,
                                  "approval": approval,
                                  "allow_expired": allow_expired or None}.items()
                if v is not None}
        return self._call(ActivateResult, "POST", f"/v1/plugins/{name}/rollback", json=body,
                          timeout=timeout or max(self.timeout, 120.0))

    def post_approval(self, name: str, approval: dict[str, Any],
                      envelope: dict[str, Any] | None = None) -> ApprovalResult:
        return self._call(ApprovalResult, "POST", f"/v1/plugins/{name}/approvals",
                          json={"approval": approval, "envelope": envelope})

    def post_label(self, name: str, label: dict[str, Any],
                   envelope: dict[str, Any]) -> AdvisoryResult:
        return self._call(AdvisoryResult, "POST", f"/v1/plugins/{name}/advisories",
                          json={"label": label, "envelope": envelope})
