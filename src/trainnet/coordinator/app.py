"""The coordinator's ASGI app (FastAPI): HTTP protocol v1 around one Coordinator core.

    app = create_app(CoordinatorService(cfg, Path("state")), join_token=None, allow_keys=None)
    uvicorn.run(app, host="127.0.0.1", port=8470)          # or: trainnet coordinator --run run.toml ...

Handlers read raw bodies (signatures cover the exact bytes), validate them strictly, and run the
core plus the durable commit in a worker thread. Every refusal is `{"error": CODE, "detail": ...}`
with a 4xx status; an unexpected exception is logged and answered 503 `server_error`, never 500.
Background loops (one `every(...)` helper) until shutdown: `coord.tick(now)` every `limits.tick_s`
seconds; held-out evaluation and byte-counter flushes; and the verifier (`svc.verify_due`, audits.py),
which fails overdue reveals and recomputes ready audits off the request lock (with `limits.verifiers ==
"nodes"` designated verifier nodes recompute them instead, through the /v1/audit/claim, .../material and
.../verdict routes of verifier_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from trainnet.coordinator.handlers import PROTOCOL, Api
from trainnet.coordinator.limits import ApiError
from trainnet.coordinator.service import CoordinatorService
from trainnet.dashboard.metrics import CONTENT_TYPE, make_registry, render
from trainnet.dashboard.static_files import static_response

log = logging.getLogger("trainnet.coordinator")

_SIG_HEADERS = [
    {"name": n, "in": "header", "required": False, "schema": {"type": "string"}}
    for n in ("X-TrainNet-Node", "X-TrainNet-Time", "X-TrainNet-Signature")
]
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"},
                                                            "detail": {"type": "string"}}}}}}


def _json_body(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return {"parameters": _SIG_HEADERS, "requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}, "responses": {"4XX": _ERROR}}


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": exc.detail, **exc.extra}, status_code=exc.status,
                        headers=exc.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise ApiError(400, "bad_request", "bad Content-Length")
        if int(cl) > limit:
            raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
    chunks, n = [], 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "body truncated (client disconnected)") from None
    return b"".join(chunks)


def create_app(svc: CoordinatorService, join_token: str | None = None,
               allow_keys: set[str] | None = None) -> FastAPI:
    """Build the app around a service (which owns the core and the store)."""
    api = Api(svc, join_token, allow_keys)
    lim = svc.limits

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def every(interval: float, step: Callable[[], None], what: str) -> None:
            # A background loop off the request path that stops with the app (bounded by `stop`).
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                if stop.is_set():
                    break
                try:
                    await run_in_threadpool(step)
                except Exception:
                    log.exception("%s failed", what)

        def evaluate() -> None:  # held-out evaluation and byte-counter flushes, apart from ticks
            svc.evaluate_if_due(time.time())
            svc.flush_traffic()

        tasks = [asyncio.create_task(every(lim.tick_s, lambda: svc.tick(time.time()), "tick")),
                 asyncio.create_task(every(lim.tick_s, evaluate, "evaluation")),
                 asyncio.create_task(every(lim.tick_s, lambda: svc.verify_due(time.time()), "verification"))]
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                await task
            try:  # a run that just finished gets its final version's held-out loss
                await run_in_threadpool(svc.evaluate_if_due, time.time())
            except Exception:
                log.exception("final evaluation failed")
            svc.close()

    app = FastAPI(title="TrainNet coordinator", version=PROTOCOL, lifespan=lifespan)

    async def guarded(request: Request, fn: Callable[[], Awaitable[Response | dict]]) -> Response:
        try:
            out = await fn()
            return out if isinstance(out, Response) else JSONResponse(out)
        except ApiError as exc:
            return _error(exc)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return JSONResponse({"error": "server_error", "detail": "internal error, logged; retry later"},
                                status_code=503, headers={"Retry-After": "5"})

    def ip_limit(request: Request) -> None:
        api.limit("ip:" + (request.client.host if request.client else "?"), time.time())

    def post(path: str, fn: Callable[..., dict], limit: int, openapi: dict[str, Any]) -> None:
        async def endpoint(request: Request) -> Response:
            async def run() -> dict:
                body = await _read_body(request, limit)
                return await run_in_threadpool(fn, request.headers, body, time.time())
            return await guarded(request, run)
        app.add_api_route(path, endpoint, methods=["POST"], openapi_extra=openapi, name=path)

    task_id = {"task_id": {"type": "string", "maxLength": 256}}
    post("/v1/register", api.register, lim.max_json_bytes, _json_body(
        {"public_key": {"type": "string"}, "join_token": {"type": "string"}, "info": {"type": "object"}},
        ["public_key"]))
    post("/v1/lease", api.lease, lim.max_json_bytes, _json_body({}, []))
    post("/v1/heartbeat", api.heartbeat, lim.max_json_bytes, _json_body(task_id, ["task_id"]))
    post("/v1/abandon", api.abandon, lim.max_json_bytes, _json_body(task_id, ["task_id"]))
    post("/v1/update", api.submit, lim.max_update_bytes, {
        "parameters": _SIG_HEADERS + [{"name": "X-TrainNet-Update-Signature", "in": "header", "required": False,
                                       "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
        "responses": {"4XX": _ERROR}})

    @app.post("/v1/audit/{task_id}/residuals", openapi_extra={
        "parameters": _SIG_HEADERS,
        "requestBody": {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
        "responses": {"4XX": _ERROR}})
    async def reveal(request: Request, task_id: str) -> Response:
        async def run() -> dict:
            body = await _read_body(request, api.reveal_limit())
            return await run_in_threadpool(api.reveal, task_id, request.headers, body, time.time())
        return await guarded(request, run)

    vapi = api.verifiers
    post("/v1/audit/claim", vapi.claim, lim.max_json_bytes, _json_body({}, []))

    @app.post("/v1/audit/{task_id}/verdict", openapi_extra=_json_body(
        {"passed": {"type": "boolean"}, "detail": {"type": "object"}}, ["passed"]))
    async def verdict(request: Request, task_id: str) -> Response:
        async def run() -> dict:
            body = await _read_body(request, lim.max_json_bytes)
            return await run_in_threadpool(vapi.verdict, task_id, request.headers, body, time.time())
        return await guarded(request, run)

    @app.get("/v1/audit/{task_id}/material", openapi_extra={"parameters": _SIG_HEADERS,
                                                             "responses": {"4XX": _ERROR}})
    async def material(request: Request, task_id: str) -> Response:
        async def run() -> Response:
            data = await run_in_threadpool(vapi.material, task_id, request.headers, time.time())
            return Response(data, media_type="application/octet-stream")
        return await guarded(request, run)

    @app.get("/v1/info")
    async def info(request: Request) -> Response:
        async def run() -> dict:
            ip_limit(request)
            return api.info()
        return await guarded(request, run)

    @app.get("/v1/status")
    async def status(request: Request) -> Response:
        async def run() -> dict:
            ip_limit(request)
            return await run_in_threadpool(api.status)
        return await guarded(request, run)

    @app.get("/v1/dashboard")
    async def dashboard_json(request: Request) -> Response:
        async def run() -> dict:
            ip_limit(request)
            return await run_in_threadpool(api.dashboard, time.time())
        return await guarded(request, run)

    registry = make_registry(lambda: api.dashboard(time.time()))

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        async def run() -> Response:
            ip_limit(request)
            return Response(await run_in_threadpool(render, registry), media_type=CONTENT_TYPE)
        return await guarded(request, run)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        async def run() -> Response:
            ip_limit(request)
            return static_response("index.html")
        return await guarded(request, run)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str) -> Response:
        async def run() -> Response:
            ip_limit(request)
            return static_response(name)
        return await guarded(request, run)

    @app.get("/v1/model/{version}", responses={"4XX": _ERROR})
    async def model(request: Request, version: str, since: str | None = None) -> Response:
        async def run() -> Response:
            ip_limit(request)
            data, v = await run_in_threadpool(api.model, version, since)
            return Response(data, media_type="application/octet-stream", headers={"X-TrainNet-Version": str(v)})
        return await guarded(request, run)

    @app.get("/v1/shard/{shard_id}", responses={"4XX": _ERROR})
    async def shard(request: Request, shard_id: str) -> Response:
        async def run() -> Response:
            ip_limit(request)
            return Response(api.shard(shard_id), media_type="application/octet-stream")
        return await guarded(request, run)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        status = exc.status_code if 400 <= exc.status_code < 500 else 400
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=status,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "bad_request", "detail": str(exc.errors())[:300]}, status_code=400)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": "server_error", "detail": "internal error, logged"}, status_code=503)

    app.state.api = api
    return app
