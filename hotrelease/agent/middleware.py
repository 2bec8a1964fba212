"""The agent's ASGI layers around the routes: the bearer token before anything else, the
cut of a body that arrives too slowly, the 1 MiB cap on JSON bodies, and strict JSON
parsing of every request body.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from hotrelease.agent.auth import TokenEntry, authenticate
from hotrelease.agent.responses import error_response
from hotrelease.errors import Unauthorized
from hotrelease.trust.canonical import JSONInputError, strict_loads

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
