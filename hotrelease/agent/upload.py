"""The streamed upload's HTTP side: PUT /v1/plugins/{name}/releases/{version}.

Every check that needs no body runs first (`Ingest.begin`); then the body streams to disk,
counted and hashed (one `trust.digest.Digest`) as it arrives, in bounded memory; then
`Ingest.finish` verifies, extracts and stores it. A refused body is drained (bounded), so
the client reads the answer instead of a reset connection.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from hotrelease.agent.middleware import BodyTimeout
from hotrelease.agent.service import Agent
from hotrelease.agent.store import crash_point, remove_tree
from hotrelease.agent.wire import MANIFEST_HEADER, SIGNATURE_HEADER
from hotrelease.errors import BadRequest, HotreleaseError, SizeMismatchError, TooLarge
from hotrelease.trust.digest import Digest

_BATCH = 4 * 1024 * 1024  # bytes handed to the writer thread at a time

# The upload's headers and body, for the OpenAPI document (the route reads the raw stream).
UPLOAD_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": MANIFEST_HEADER, "in": "header", "required": True,
         "schema": {"type": "string"}, "description": "base64 of the manifest.json bytes"},
        {"name": SIGNATURE_HEADER, "in": "header", "required": True,
         "schema": {"type": "string"}, "description": "base64 of the manifest.json.sig bytes"},
    ],
    "requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


async def upload(agent: Agent, request: Request, name: str, version: str,
                 caller: str) -> JSONResponse:
    """201 with the stored release, or 200 when this exact release was already stored."""
    cap = agent.config.max_upload_bytes
    declared = request.headers.get("content-length")
    try:
        length = int(declared) if declared is not None else None
    except ValueError:
        length = None
    headers = {k: request.headers.get(k, "") for k in (MANIFEST_HEADER, SIGNATURE_HEADER)}
    try:
        manifest, mbytes, ebytes, exists = await run_in_threadpool(
            agent.ingest.begin, name, version, caller, headers, length)
    except TooLarge:
        raise
    except HotreleaseError:
        await _drain(request, cap)
        raise
    if exists:
        digest, size = await _hash_body(request, manifest.bundle.size)
        result = await run_in_threadpool(agent.ingest.unchanged, name, caller, manifest,
                                         digest, size)
        return JSONResponse(result.to_dict(), status_code=200)
    workdir = agent.store.new_tmp_dir("upload")
    try:
        bundle = workdir / "bundle"
        started = time.perf_counter()
        digest = await _receive(agent, request, bundle, name, caller, version, cap,
                                manifest.bundle.size)
        received_ms = round((time.perf_counter() - started) * 1000, 3)
        result = await run_in_threadpool(
            lambda: agent.ingest.finish(name, caller, manifest, mbytes, ebytes, workdir,
                                        bundle, digest, received_ms=received_ms))
    finally:
        await run_in_threadpool(remove_tree, workdir)
    return JSONResponse(result.to_dict(), status_code=201 if result.status == "stored" else 200)


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
    """(sha256, size) of a body that is not kept; reading stops past `limit` bytes."""
    digest = Digest()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            break
        digest.update(chunk)
    return digest.hexdigest(), size


def _write_batch(fd: int, digest: Digest, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


async def _receive(agent: Agent, request: Request, path: Path, name: str, caller: str,
                   version: str, cap: int, expected: int) -> str:
    """Stream the body to `path`. Bytes are counted as they arrive, whatever Content-Length
    said: over the cap -> 413 at once; never more than the signed bundle size is written (a
    longer or shorter body is a size mismatch). Hashing and writing run in a worker thread,
    one batch (<= 4 MiB) at a time, while the event loop receives the next batch: memory
    stays bounded at about two batches. fsync at the end."""
    digest = Digest()
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
                    raise agent.ingest.refuse(name, caller, version, TooLarge(
                        f"body is over the limit of {cap} bytes"))
                if overflow or size > expected:
                    overflow = True  # keep counting (up to the cap) to report the right error
                    continue
                batch.append(chunk)
                batch_bytes += len(chunk)
                if batch_bytes >= _BATCH:
                    await flush()
        except ClientDisconnect:
            raise agent.ingest.refuse(name, caller, version, BadRequest(
                f"client disconnected after {size} bytes", code="incomplete_upload")) from None
        if overflow or size != expected:
            raise agent.ingest.refuse(name, caller, version, SizeMismatchError(
                f"body is {size} bytes, the manifest declares {expected}"))
        await flush()
        await flush()  # waits for the last batch
        await run_in_threadpool(os.fsync, fd)
    finally:
        if pending is not None:
            await asyncio.wait([pending])
        os.close(fd)
    return digest.hexdigest()
