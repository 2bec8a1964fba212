"""The agent's HTTP API (FastAPI): parse, authenticate, call `service.Agent`, map errors.

Routes only: the ASGI layers (token first, body cuts, JSON limits) are in `agent.middleware`,
the streamed upload in `agent.upload`, the error statuses in `agent.responses`, and every
answer is built from an `agent.wire` model. Every error body is
`{"error": {"code": <stable machine code>, "message": <human text>}}`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hotrelease import __version__
from hotrelease.agent import upload as streamed
from hotrelease.agent.middleware import (
    BodyTimeout,
    JsonBodyLimit,
    RequestGuard,
    StrictJSONRoute,
    caller_of,
)
from hotrelease.agent.responses import ERRORS, error_response, status_for
from hotrelease.agent.service import Agent, Meta
from hotrelease.agent.wire import AgentHealth, PluginList
from hotrelease.errors import HotreleaseError, NotFound, RequestTimeout, Unauthorized
from hotrelease.trust.canonical import MAX_JSON_DEPTH
from hotrelease.trust.versions import MAX_VERSION_LENGTH

_bearer = HTTPBearer(auto_error=False, description="Bearer token (stored hashed in agent.toml)")

_Text = Field(default=None, max_length=2048)


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
                  responses=ERRORS, lifespan=lifespan)
    app.state.agent = agent
    app.router.route_class = StrictJSONRoute
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(RequestGuard, tokens=agent.config.tokens)  # outermost: token first

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
        return AgentHealth(ok=True, agent="hotrelease", version=__version__).to_dict()

    @app.get("/v1/plugins", summary="Every plugin slot: current, previous, state, health")
    def plugins(_: str = Depends(who)) -> dict[str, Any]:
        return PluginList(plugins=[agent.status(name)
                                   for name in sorted(agent.config.plugins)]).to_dict()

    @app.get("/v1/plugins/{name}", summary="One plugin slot")
    def plugin(name: str, caller: str = Depends(who)) -> dict[str, Any]:
        agent.plugin(name, who=caller, action="read")
        return agent.status(name).to_dict()

    @app.get("/v1/plugins/{name}/history", summary="Append-only audit records, oldest first")
    def history(name: str, limit: int = Query(200, ge=1, le=10000),
                caller: str = Depends(who)) -> dict[str, Any]:
        agent.plugin(name, who=caller, action="read")
        return agent.history(name, limit).to_dict()

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
        return info.to_dict()

    @app.put("/v1/plugins/{name}/releases/{version}", openapi_extra=streamed.UPLOAD_OPENAPI,
             summary="Streamed upload: body = bundle, signed manifest in headers")
    async def upload(name: str, version: str, request: Request,
                     caller: str = Depends(who)) -> JSONResponse:
        return await streamed.upload(agent, request, name, version, caller)

    @app.post("/v1/plugins/{name}/activate",
              summary="Switch to a stored version, reload, health-check, roll back on failure")
    def activate(name: str, body: ActivateRequest, caller: str = Depends(who)) -> \
            dict[str, Any]:
        meta = Meta(body.stage, body.release_id, body.pipeline_url, body.approval, body.reason)
        return agent.activation.activate(name, body.version, caller, meta).to_dict()

    @app.post("/v1/plugins/{name}/rollback",
              summary="Back to the previous (or a named) stored version")
    def rollback(name: str, body: RollbackRequest | None = None,
                 caller: str = Depends(who)) -> dict[str, Any]:
        body = body or RollbackRequest()
        meta = Meta(body.stage, body.release_id, body.pipeline_url, body.approval, body.reason,
                    allow_expired=body.allow_expired)
        return agent.activation.activate(name, body.version, caller, meta,
                                         rollback=True).to_dict()

    @app.post("/v1/plugins/{name}/advisories",
              summary="A signed security label: raises the plugin's security floor")
    def advisory(name: str, body: AdvisoryRequest, caller: str = Depends(who)) -> \
            dict[str, Any]:
        return agent.floor.add_advisory(name, caller, body.label, body.envelope).to_dict()

    @app.post("/v1/plugins/{name}/approvals",
              summary="Record a stage approval in history (verified if approver keys are set)")
    def approval(name: str, body: ApprovalRequest, caller: str = Depends(who)) -> \
            dict[str, Any]:
        return agent.approvals.record(name, caller, body.approval, body.envelope).to_dict()

    return app
