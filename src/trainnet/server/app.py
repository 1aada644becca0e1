"""The coordinator's HTTP shell (FastAPI): parse, authenticate, map errors; the work is in api.py.

    app = create_app(runtime)        # server/runtime.py assembles the service, API and background duties
    uvicorn.run(app, ...)            # or: trainnet coordinator --run run.toml --state state/

Order of work on every signed request: the signature (over the body's sha256, sent in a header) is checked
from the headers alone; then cheap checks (lease held, codec, size caps derived from the model); only then is
the body read, with a size cap and a deadline, and hashed against the signed digest. Unsigned requests are
rate-limited per address. Every refusal is `{"error": CODE, "detail": ...}` with a 4xx status; an unexpected
exception is logged and answered 503 `server_error`, never 500; a store that refuses writes answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from trainnet.protocol.auth import HDR_UPDATE_SIG
from trainnet.server.api import PROTOCOL
from trainnet.server.limits import ApiError
from trainnet.server.runtime import Runtime
from trainnet.server.service import Unavailable
from trainnet.server.uploads import COMMIT_OPTIONAL, COMMIT_REQUIRED, parse_commit

log = logging.getLogger("trainnet.coordinator")

_SIG = [{"name": n, "in": "header", "required": False, "schema": {"type": "string"}}
        for n in ("X-TrainNet-Node", "X-TrainNet-Time", "X-TrainNet-Counter", "X-TrainNet-Body-SHA256",
                  "X-TrainNet-Signature")]
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}}}}


def _json_doc(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return {"parameters": _SIG, "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"4XX": _ERROR}}


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object"}

_BINARY_DOC = {"parameters": _SIG, "requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}, "responses": {"4XX": _ERROR}}


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": exc.detail, **exc.extra}, status_code=exc.status,
                        headers=exc.headers)


def _content_length(request: Request) -> int | None:
    cl = request.headers.get("content-length")
    if cl is None:
        return None
    if not cl.isdigit() or len(cl) > 15:
        raise ApiError(400, "bad_request", "bad Content-Length")
    return int(cl)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, at most `limit` bytes, within `timeout_s` (a slow sender is cut off)."""
    cl = _content_length(request)
    if cl is not None and cl > limit:
        raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
    chunks, n = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "body truncated (client disconnected)") from None
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"body not received within {timeout_s:.0f}s") from None
    return b"".join(chunks)


def create_app(rt: Runtime) -> FastAPI:
    api, svc = rt.api, rt.svc
    lim = svc.limits
    # A JSON body (16 KiB at most) gets the header deadline, not the upload's: otherwise a client trickling
    # /v1/register bodies holds a connection slot for body_timeout_s (120 s) per request.
    json_s = min(lim.body_timeout_s, lim.header_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(64, lim.max_connections)
        try:
            yield
        finally:
            await run_in_threadpool(rt.close)

    app = FastAPI(title="TrainNet coordinator", version=PROTOCOL, lifespan=lifespan)

    async def guarded(request: Request, fn: Callable[[], Awaitable[Response | dict]]) -> Response:
        try:
            out = await fn()
            return out if isinstance(out, Response) else JSONResponse(out)
        except ApiError as exc:
            return _error(exc)
        except Unavailable as exc:
            return JSONResponse({"error": "unavailable", "detail": str(exc)[:300]}, status_code=503,
                                headers={"Retry-After": "5"})
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return JSONResponse({"error": "server_error", "detail": "internal error, logged; retry later"},
                                status_code=503, headers={"Retry-After": "5"})

    def client(request: Request) -> str:
        return request.client.host if request.client else "?"

    def ip_limit(request: Request) -> None:
        api.auth.ip(client(request), time.time())

    async def signed_json(request: Request, path: str, handler: Callable[..., dict]) -> dict:
        now = time.time()
        caller = api.auth.caller(request.headers, request.method, path, now)  # CPU only: no thread hop
        body = await read_body(request, lim.max_json_bytes, json_s)
        api.auth.check_body(caller, body)
        return await run_in_threadpool(handler, caller, body, now)

    def post_json(path: str, handler: Callable[..., dict], doc: dict[str, Any]) -> None:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, lambda: signed_json(request, path, handler))
        app.add_api_route(path, endpoint, methods=["POST"], openapi_extra=doc, name=path)

    # ------------------------------------------------------------------ nodes
    @app.post("/v1/register", openapi_extra=_json_doc(
        {"public_key": {"type": "string"}, "join_token": {"type": "string"}, "info": {"type": "object"},
         "pow": {"type": "string"}}, ["public_key"]))
    async def register(request: Request) -> Response:
        async def run() -> dict:
            ip_limit(request)
            body = await read_body(request, lim.max_json_bytes, json_s)
            return await run_in_threadpool(api.register, request.headers, body, client(request), time.time())
        return await guarded(request, run)

    task_id_prop = {"task_id": {"type": "string", "maxLength": 64}}
    post_json("/v1/lease", api.lease, _json_doc({}, []))
    post_json("/v1/heartbeat", api.heartbeat, _json_doc(task_id_prop | {"progress": {"type": "object"}},
                                                        ["task_id"]))
    post_json("/v1/abandon", api.abandon, _json_doc(task_id_prop, ["task_id"]))

    # ------------------------------------------------------------------ updates
    @app.post("/v1/update/{task_id}", openapi_extra=_BINARY_DOC | {"parameters": _SIG + [
        {"name": HDR_UPDATE_SIG, "in": "header", "required": False, "schema": {"type": "string"}}]})
    async def update(request: Request, task_id: str) -> Response:
        async def run() -> dict:
            now = time.time()
            caller = api.auth.caller(request.headers, "POST", f"/v1/update/{task_id}", now)
            ticket = await run_in_threadpool(api.uploads.begin, caller, task_id, _content_length(request), now)
            size, sha = await run_in_threadpool(_stream_into, request, svc.blobs, ticket.key, ticket.max_bytes,
                                                lim.body_timeout_s)
            svc.count_bytes("update_in", size)
            return await run_in_threadpool(api.uploads.finish, caller, ticket, size, sha,
                                           request.headers.get(HDR_UPDATE_SIG), now)
        return await guarded(request, run)

    @app.post("/v1/update/{task_id}/commit", openapi_extra=_json_doc(
        {k: {"type": _JSON_TYPES[t]} for k, t in (COMMIT_REQUIRED | COMMIT_OPTIONAL).items()}, list(COMMIT_REQUIRED)))
    async def commit(request: Request, task_id: str) -> Response:
        async def run() -> dict:
            now = time.time()
            caller = await run_in_threadpool(api.auth.caller, request.headers, "POST",
                                             f"/v1/update/{task_id}/commit", now)
            body = await read_body(request, lim.max_json_bytes, json_s)
            api.auth.check_body(caller, body)
            meta = parse_commit(body)
            return await run_in_threadpool(api.uploads.commit, caller, task_id, meta,
                                           request.headers.get(HDR_UPDATE_SIG), now)
        return await guarded(request, run)

    # ------------------------------------------------------------------ verification
    @app.post("/v1/audit/{task_id}/residuals", openapi_extra=_BINARY_DOC)
    async def reveal(request: Request, task_id: str) -> Response:
        async def run() -> dict:
            now = time.time()
            caller = await run_in_threadpool(api.auth.caller, request.headers, "POST",
                                             f"/v1/audit/{task_id}/residuals", now)
            await run_in_threadpool(api.audits.check_reveal, caller, task_id, now)
            body = await read_body(request, api.audits.reveal_cap, lim.body_timeout_s)
            api.auth.check_body(caller, body)
            return await run_in_threadpool(api.audits.reveal, caller, task_id, body, now)
        return await guarded(request, run)

    post_json("/v1/audit/claim", lambda caller, body, now: api.audits.claim(caller, now), _json_doc({}, []))

    @app.post("/v1/audit/{task_id}/verdict", openapi_extra=_json_doc(
        {"passed": {"type": "boolean"}, "detail": {"type": "object"}}, ["passed"]))
    async def verdict(request: Request, task_id: str) -> Response:
        def handler(caller: Any, body: bytes, now: float) -> dict:
            from trainnet.server.limits import parse_json_object

            d = parse_json_object(body, {"passed": bool}, {"detail": dict}, lim.max_string)
            return api.audits.verdict(caller, task_id, d["passed"], d.get("detail") or {}, now)
        return await guarded(request, lambda: signed_json(request, f"/v1/audit/{task_id}/verdict", handler))

    @app.get("/v1/audit/{task_id}/material", openapi_extra={"parameters": _SIG, "responses": {"4XX": _ERROR}})
    async def material(request: Request, task_id: str) -> Response:
        async def run() -> Response:
            now = time.time()
            caller = await run_in_threadpool(api.auth.caller, request.headers, "GET",
                                             f"/v1/audit/{task_id}/material", now)
            api.auth.check_body(caller, b"")
            data = await run_in_threadpool(api.audits.material, caller, task_id, now)
            return Response(data, media_type="application/octet-stream")
        return await guarded(request, run)

    # ------------------------------------------------------------------ downloads
    @app.get("/v1/info")
    async def info(request: Request) -> Response:
        async def run() -> dict:
            ip_limit(request)
            return await run_in_threadpool(api.info)
        return await guarded(request, run)

    @app.get("/v1/version/{version}", responses={"4XX": _ERROR})
    async def version(request: Request, version: str) -> Response:
        async def run() -> dict:
            ip_limit(request)
            return await run_in_threadpool(api.version, version)
        return await guarded(request, run)

    @app.get("/v1/blob/{key:path}", responses={"4XX": _ERROR})
    async def blob(request: Request, key: str) -> Response:
        async def run() -> Response:
            ip_limit(request)
            out = await run_in_threadpool(api.blob, key)
            if isinstance(out, bytes):
                return Response(out, media_type="application/octet-stream")
            return FileResponse(out, media_type="application/octet-stream")
        return await guarded(request, run)

    @app.get("/v1/shard/{shard_id}", responses={"4XX": _ERROR})
    async def shard(request: Request, shard_id: str) -> Response:
        async def run() -> Response:
            ip_limit(request)
            return Response(await run_in_threadpool(api.shard, shard_id), media_type="application/octet-stream")
        return await guarded(request, run)

    # ------------------------------------------------------------------ status (public) and the operator's view
    @app.get("/v1/status")
    async def status(request: Request) -> Response:
        async def run() -> dict:
            ip_limit(request)
            return await run_in_threadpool(api.status)
        return await guarded(request, run)

    @app.get("/v1/operator/status")
    async def operator_status(request: Request, token: str | None = None) -> Response:
        async def run() -> dict:
            ip_limit(request)
            api.require_operator(request.headers, token)
            return await run_in_threadpool(api.operator_status)
        return await guarded(request, run)

    @app.post("/v1/operator/tokens")
    async def issue_token(request: Request) -> Response:
        async def run() -> dict:
            from trainnet.server.limits import parse_json_object

            ip_limit(request)
            api.require_operator(request.headers)
            d = parse_json_object(await read_body(request, lim.max_json_bytes, json_s),
                                  {"max_keys": int}, {"label": str}, lim.max_string)
            return await run_in_threadpool(api.issue_token, d["max_keys"], d.get("label") or "")
        return await guarded(request, run)

    from trainnet.server.app_views import add_views

    add_views(app, rt, guarded, ip_limit)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        status_code = exc.status_code if 400 <= exc.status_code < 500 else 400
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "bad_request", "detail": str(exc.errors())[:300]}, status_code=400)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": "server_error", "detail": "internal error, logged"}, status_code=503)

    app.state.runtime = rt
    return app


def _stream_into(request: Request, blobs: Any, key: str, max_bytes: int, timeout_s: float) -> tuple[int, str]:
    """Runs in a worker thread: pull the request body from the event loop chunk by chunk into the store."""
    stream = request.stream().__aiter__()
    deadline = time.monotonic() + timeout_s

    async def next_chunk() -> bytes | None:
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                return await stream.__anext__()
        except StopAsyncIteration:
            return None

    def chunks():
        while True:
            try:
                c = anyio.from_thread.run(next_chunk)
            except ClientDisconnect:
                raise ApiError(400, "bad_request", "body truncated (client disconnected)") from None
            except TimeoutError:
                raise ApiError(408, "body_timeout", f"body not received within {timeout_s:.0f}s") from None
            if c is None:
                return
            if c:
                yield c

    from trainnet.store.blobs import BlobTooLarge

    try:
        return blobs.put_stream(key, chunks(), max_bytes)
    except BlobTooLarge:
        raise ApiError(413, "payload_too_large", f"an update of this run is at most {max_bytes} bytes") from None
