"""The agent's HTTP API (FastAPI): parse, authenticate, call `service.Agent`, map errors.

Every error body is `{"error": {"code": <stable machine code>, "message": <human text>}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from hotrelease import __version__
from hotrelease.agent.auth import TokenEntry, Unauthorized, authenticate
from hotrelease.agent.hooks import AgentStopping
from hotrelease.agent.service import (
    MANIFEST_HEADER,
    SIGNATURE_HEADER,
    Agent,
    AgentFailure,
    BadRequest,
    Conflict,
    Meta,
    NotFound,
    TooLarge,
)
from hotrelease.agent.store import crash_point, remove_tree
from hotrelease.errors import (
    HotreleaseError,
    PolicyError,
    SizeMismatchError,
    UsageError,
    VerificationError,
)
from hotrelease.trust.canonical import MAX_JSON_DEPTH, JSONInputError, strict_loads
from hotrelease.trust.versions import MAX_VERSION_LENGTH

_bearer = HTTPBearer(auto_error=False, description="Bearer token (stored hashed in agent.toml)")

# Set in a request's scope by the server (server.py) when it cut the body for time; the
# value is the message. `RequestGuard` turns it into BodyTimeout at the app's next read.
CUT_SCOPE_KEY = "hotrelease.body_cut"
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})
CALLER_STATE_KEY = "caller"  # request.state: the token name `RequestGuard` authenticated


def caller_of(request: Request) -> str:
    """Who sent this request (the name of its token), as `RequestGuard` found it. A route
    outside PUBLIC_PATHS is never reached without it; fail closed all the same."""
    caller = getattr(request.state, CALLER_STATE_KEY, None)
    if not isinstance(caller, str):
        raise Unauthorized()
    return caller


class BodyTimeout(HTTPException):
    """Raised by a read of a body the server cut for time. An HTTPException, so FastAPI's
    JSON body parsing re-raises it as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message)


class RequestTimeout(HotreleaseError):
    code = "body_timeout"


def status_for(exc: HotreleaseError) -> int:
    for cls, status in ((Unauthorized, 401), (RequestTimeout, 408), (TooLarge, 413),
                        (NotFound, 404), (Conflict, 409), (PolicyError, 409),
                        (VerificationError, 422), (BadRequest, 400), (UsageError, 400),
                        (AgentFailure, 500), (AgentStopping, 503)):
        if isinstance(exc, cls):
            return status
    return 400


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


_Text = Field(default=None, max_length=2048)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. bad_signature")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "Bad request: bad_name, bad_version, incomplete_upload"),
        (401, "Missing or invalid bearer token (unauthorized), checked before any byte of "
              "the body is read"),
        (404, "unknown_plugin, not_stored, not_found"),
        (408, "header_timeout (headers too slow), body_timeout (body too slow; a partial "
              "upload is removed)"),
        (409, "version_conflict, activation_in_progress, nothing_to_roll_back, downgrade, "
              "below_security_floor, advisory_unreadable, approval_required, "
              "precheck_failed"),
        (413, "too_large"),
        (422, "Verification failed (bad_manifest, bad_signature, threshold_not_met, "
              "digest_mismatch, size_mismatch, expired, identity_mismatch, unsafe_archive) "
              "or a malformed request body (bad_request)"),
        (431, "header_too_large: request line and headers over [agent] max_header_bytes"),
        (500, "internal"),
        (503, "too_many_connections: [agent] max_connections are open (Retry-After: 1)"))}


# Versions are not bounded here: the one version check (`versioning.parse_version`) runs
# in the agent, answers 400 bad_version and records the refusal, as for the URL's version.
_Version = f"SemVer 2.0.0, at most {MAX_VERSION_LENGTH} characters"


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(description=_Version)
    stage: str | None = _Text
    release_id: str | None = _Text
    pipeline_url: str | None = _Text
    reason: str | None = _Text
    approval: dict[str, Any] | None = Field(
        default=None, description="Approval document + envelope; recorded, not enforced yet")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(default=None,
                                description=f"Stored version; default: the previous one. "
                                            f"{_Version}")
    stage: str | None = _Text
    release_id: str | None = _Text
    pipeline_url: str | None = _Text
    reason: str | None = _Text
    approval: dict[str, Any] | None = Field(
        default=None, description="Approval document + envelope: required (on a node with "
        "approver keys) to roll to a version this node never ran")
    allow_expired: bool = Field(
        default=False, description="Roll back to a version this node ran before even though "
        "its manifest has expired (recorded in history)")


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approval: dict[str, Any]
    envelope: dict[str, Any] | None = None


class AdvisoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: dict[str, Any]
    envelope: dict[str, Any]


_UPLOAD_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": MANIFEST_HEADER, "in": "header", "required": True,
         "schema": {"type": "string"}, "description": "base64 of the manifest.json bytes"},
        {"name": SIGNATURE_HEADER, "in": "header", "required": True,
         "schema": {"type": "string"}, "description": "base64 of the manifest.json.sig bytes"},
    ],
    "requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


MAX_JSON_BODY = 1024 * 1024


class _RefusedBody(json.JSONDecodeError):
    """Strict JSON refused a request body: FastAPI answers a JSONDecodeError with a
    RequestValidationError (422 bad_request), which carries this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "", 0)


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = strict_loads(await self.body())
            except JSONInputError as exc:
                raise _RefusedBody(str(exc)) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Every JSON request body is parsed by `canonical.strict_loads`: duplicate keys, nesting
    deeper than MAX_JSON_DEPTH, NaN, invalid UTF-8 or lone surrogates are a 422 bad_request
    before any handler runs (after `RequestGuard` checked the token; nothing is recorded in
    history for it), never a RecursionError."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


class JsonBodyLimit:
    """ASGI middleware: bodies of non-upload requests (JSON) are capped at 1 MiB, counted as
    they arrive (Content-Length is checked first, but not trusted)."""

    def __init__(self, app: Any, limit: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "PUT":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = error_response(413, "too_large",
                                      f"request body over {self.limit} bytes")
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # FastAPI re-raises HTTPException from body reading
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class RequestGuard:
    """ASGI middleware, outermost. (1) The token first: a request for anything but
    PUBLIC_PATHS without a valid bearer token is answered 401 before any byte of its body is
    read, so a malformed, oversize or endless body without a token gets the same 401 as any
    other; the token's name is kept in the request state for `who`. (2) A body the server
    cut for time (CUT_SCOPE_KEY) raises BodyTimeout in whoever reads it next."""

    def __init__(self, app: Any, tokens: list[TokenEntry]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in PUBLIC_PATHS:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                caller = authenticate(None if header is None else header.decode("latin-1"),
                                      self.tokens)
            except Unauthorized as exc:
                await error_response(401, exc.code, str(exc))(scope, receive, send)
                return
            scope.setdefault("state", {})[CALLER_STATE_KEY] = caller  # `who` reads it

        async def guarded() -> Any:
            message = await receive()
            cut = (scope.get("extensions") or {}).get(CUT_SCOPE_KEY)
            if cut:
                raise BodyTimeout(cut)
            return message

        await self.app(scope, guarded, send)


_CUT_ACTIONS = {"releases": "upload", "activate": "activate", "rollback": "rollback",
                "advisories": "advisory", "approvals": "approval"}


def _record_cut(agent: Agent, request: Request, exc: BodyTimeout) -> None:
    """A body cut on a configured plugin's route is a refusal in that plugin's history (the
    token was checked before the body was read)."""
    name = request.path_params.get("name")
    parts = request.url.path.split("/")  # "", "v1", "plugins", name, what, ...
    action = _CUT_ACTIONS.get(parts[4]) if len(parts) > 4 else None
    if action is None or name not in agent.config.plugins:
        return
    try:
        who = caller_of(request)
    except Unauthorized:
        return
    record: dict[str, Any] = {"action": action, "who": who}
    if request.path_params.get("version"):
        record["version"] = str(request.path_params["version"])[:MAX_VERSION_LENGTH]
    agent.refuse(name, record, RequestTimeout(str(exc.detail)))


def create_app(agent: Agent) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        agent.shutdown()  # after the last request: no hook outlives the server

    app = FastAPI(title="hotrelease agent", version=__version__,
                  openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None,
                  responses=_ERRORS, lifespan=lifespan)
    app.state.agent = agent
    app.router.route_class = StrictJSONRoute
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(RequestGuard, tokens=agent.config.tokens)  # outermost: token first
    cap = agent.config.max_upload_bytes

    def who(request: Request, _cred: Any = Security(_bearer)) -> str:
        return caller_of(request)  # `_cred` only declares the bearer scheme in the OpenAPI

    @app.exception_handler(HotreleaseError)
    async def _hr_error(request: Request, exc: HotreleaseError) -> JSONResponse:
        return error_response(status_for(exc), exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":  # strict JSON refused the body: say why
            reason = (first.get("ctx") or {}).get("error", "not valid JSON")
            return error_response(422, "bad_request", f"request body: {reason} (strict JSON: "
                                  f"no duplicate keys, at most {MAX_JSON_DEPTH} levels)")
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, "bad_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(request: Request, exc: BodyTimeout) -> JSONResponse:
        await run_in_threadpool(_record_cut, agent, request, exc)
        return error_response(408, RequestTimeout.code, str(exc.detail))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")

    @app.get("/v1/health", summary="Agent liveness (no token needed)")
    def health() -> dict[str, Any]:
        return {"ok": True, "agent": "hotrelease", "version": __version__}

    @app.get("/v1/plugins", summary="Every plugin slot: current, previous, state, health")
    def plugins(_: str = Depends(who)) -> dict[str, Any]:
        return {"plugins": [_plugin_view(agent, name) for name in sorted(agent.config.plugins)]}

    @app.get("/v1/plugins/{name}", summary="One plugin slot")
    def plugin(name: str, caller: str = Depends(who)) -> dict[str, Any]:
        agent.plugin(name, who=caller, action="read")
        return _plugin_view(agent, name)

    @app.get("/v1/plugins/{name}/history", summary="Append-only audit records, oldest first")
    def history(name: str, limit: int = Query(200, ge=1, le=10000),
                caller: str = Depends(who)) -> dict[str, Any]:
        agent.plugin(name, who=caller, action="read")
        return {"name": name, "records": agent.store.read_history(name, limit)}

    @app.get("/v1/plugins/{name}/releases/{version}", summary="A stored release")
    def release(name: str, version: str, caller: str = Depends(who)) -> dict[str, Any]:
        agent.plugin(name, who=caller, action="read")
        agent.check_version_param(name, version, {"action": "read", "who": caller,
                                                  "version": version})
        info = None
        if version in agent.store.stored_versions(name):
            info = agent.release_info(name, version)
        if info is None:
            raise NotFound(f"{name}@{version} is not stored on this node", code="not_stored")
        return info

    @app.put("/v1/plugins/{name}/releases/{version}", openapi_extra=_UPLOAD_OPENAPI,
             summary="Streamed upload: body = bundle, signed manifest in headers")
    async def upload(name: str, version: str, request: Request,
                     caller: str = Depends(who)) -> JSONResponse:
        declared = request.headers.get("content-length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            length = None
        headers = {k: request.headers.get(k, "") for k in (MANIFEST_HEADER, SIGNATURE_HEADER)}
        try:
            manifest, mbytes, ebytes, exists = await run_in_threadpool(
                agent.begin_upload, name, version, caller, headers, length)
        except TooLarge:
            raise
        except HotreleaseError:
            await _drain(request, cap)
            raise
        if exists:
            digest, size = await _hash_body(request, manifest.bundle.size)
            result = await run_in_threadpool(agent.upload_unchanged, name, caller, manifest,
                                             digest, size)
            return JSONResponse(result, status_code=200)
        workdir = agent.store.new_tmp_dir("upload")
        try:
            bundle = workdir / "bundle"
            started = time.perf_counter()
            digest = await _receive(agent, request, bundle, name, caller, version, cap,
                                    manifest.bundle.size)
            received_ms = round((time.perf_counter() - started) * 1000, 3)
            result = await run_in_threadpool(agent.finish_upload, name, caller, manifest,
                                             mbytes, ebytes, workdir, bundle, digest)
            if "timings" in result:
                result["timings"]["receive_ms"] = received_ms
        finally:
            await run_in_threadpool(remove_tree, workdir)
        return JSONResponse(result, status_code=201 if result["status"] == "stored" else 200)

    @app.post("/v1/plugins/{name}/activate",
              summary="Switch to a stored version, reload, health-check, roll back on failure")
    def activate(name: str, body: ActivateRequest, caller: str = Depends(who)) -> \
            dict[str, Any]:
        meta = Meta(body.stage, body.release_id, body.pipeline_url, body.approval, body.reason)
        return agent.activate(name, body.version, caller, meta)

    @app.post("/v1/plugins/{name}/rollback",
              summary="Back to the previous (or a named) stored version")
    def rollback(name: str, body: RollbackRequest | None = None,
                 caller: str = Depends(who)) -> dict[str, Any]:
        body = body or RollbackRequest()
        meta = Meta(body.stage, body.release_id, body.pipeline_url, body.approval, body.reason,
                    allow_expired=body.allow_expired)
        return agent.activate(name, body.version, caller, meta,  # type: ignore[arg-type]
                              rollback=True)

    @app.post("/v1/plugins/{name}/advisories",
              summary="A signed security label: raises the plugin's security floor")
    def advisory(name: str, body: AdvisoryRequest, caller: str = Depends(who)) -> \
            dict[str, Any]:
        return agent.add_advisory(name, caller, body.label, body.envelope)

    @app.post("/v1/plugins/{name}/approvals",
              summary="Record a stage approval in history (verified if approver keys are set)")
    def approval(name: str, body: ApprovalRequest, caller: str = Depends(who)) -> \
            dict[str, Any]:
        return agent.add_approval(name, caller, body.approval, body.envelope)

    return app


def _plugin_view(agent: Agent, name: str) -> dict[str, Any]:
    state = agent.store.load_state(name)
    problem = None
    try:
        floor, advisory = agent.security_floor(name)
    except HotreleaseError as exc:  # unreadable advisory: the floor is unknown, say so
        floor, advisory, problem = None, None, str(exc)
    return {**state, "name": name, "stored": agent.store.stored_versions(name),
            "security_floor": floor, "security_floor_advisory": advisory,
            **({"security_floor_problem": problem} if problem else {}),
            "current_link": agent.store.read_current(name),
            "in_progress": agent.in_progress(name)}


async def _drain(request: Request, limit: int) -> None:
    """Read and discard the rest of a refused body (bounded), so the client sees our answer
    instead of a reset connection."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return
    except (ClientDisconnect, BodyTimeout):  # the refusal already recorded is the answer
        return


async def _hash_body(request: Request, limit: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            break
        digest.update(chunk)
    return digest.hexdigest(), size


_BATCH = 4 * 1024 * 1024  # bytes handed to the writer thread at a time


def _write_batch(fd: int, digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


async def _receive(agent: Agent, request: Request, path: Any, name: str, caller: str,
                   version: str, cap: int, expected: int) -> str:
    """Stream the body to `path`. Bytes are counted as they arrive, whatever Content-Length
    said: over the cap -> 413 at once; never more than the signed bundle size is written (a
    longer or shorter body is a size mismatch). Hashing and writing run in a worker thread,
    one batch (<= 4 MiB) at a time, while the event loop receives the next batch: memory
    stays bounded at about two batches. fsync at the end."""
    digest = hashlib.sha256()
    size = 0
    overflow = False
    batch: list[bytes] = []
    batch_bytes = 0
    pending: Any = None
    flushed = False
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    async def flush() -> None:
        nonlocal batch, batch_bytes, pending, flushed
        if pending is not None:
            await pending
            pending = None
        if batch:
            pending = loop.run_in_executor(None, _write_batch, fd, digest, batch)
            batch, batch_bytes = [], 0
            if not flushed:
                flushed = True
                await pending
                pending = None
                crash_point("upload.receiving")

    try:
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                size += len(chunk)
                if size > cap:
                    raise agent.refuse_upload(name, caller, version, TooLarge(
                        f"body is over the limit of {cap} bytes"))
                if overflow or size > expected:
                    overflow = True  # keep counting (up to the cap) to report the right error
                    continue
                batch.append(chunk)
                batch_bytes += len(chunk)
                if batch_bytes >= _BATCH:
                    await flush()
        except ClientDisconnect:
            raise agent.refuse_upload(name, caller, version, BadRequest(
                f"client disconnected after {size} bytes", code="incomplete_upload")) from None
        if overflow or size != expected:
            raise agent.refuse_upload(name, caller, version, SizeMismatchError(
                f"body is {size} bytes, the manifest declares {expected}"))
        await flush()
        await flush()  # waits for the last batch
        await run_in_threadpool(os.fsync, fd)
    finally:
        if pending is not None:
            await asyncio.wait([pending])
        os.close(fd)
    return digest.hexdigest()
