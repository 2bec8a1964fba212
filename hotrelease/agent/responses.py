"""From the error tree to HTTP: the status each `HotreleaseError` class answers with, the one
error body (`agent.wire.ErrorBody`), and the error statuses the OpenAPI document lists.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from hotrelease.agent import wire
from hotrelease.errors import (
    AgentFailure,
    AgentStopping,
    BadRequest,
    Conflict,
    HotreleaseError,
    NotFound,
    PolicyError,
    RequestTimeout,
    TooLarge,
    Unauthorized,
    UsageError,
    VerificationError,
)

# Most specific first: the first class an error is an instance of decides.
_STATUS_BY_CLASS: tuple[tuple[type[HotreleaseError], int], ...] = (
    (Unauthorized, 401), (RequestTimeout, 408), (TooLarge, 413), (NotFound, 404),
    (Conflict, 409), (PolicyError, 409), (VerificationError, 422), (BadRequest, 400),
    (UsageError, 400), (AgentFailure, 500), (AgentStopping, 503))


def status_for(exc: HotreleaseError) -> int:
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return status
    return 400


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = wire.ErrorBody.of(code, message).to_dict()
    return JSONResponse(body, status_code=status, headers=headers)


# --- the error answers as the OpenAPI document describes them ------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. bad_signature")
    message: str


class ErrorBody(BaseModel):  # `agent.wire.ErrorBody` as the OpenAPI document shows it

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
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
