"""The human-facing routes of the coordinator: the dashboard page, its JSON, and Prometheus metrics.

    add_views(app, runtime, guarded, ip_limit)

The dashboard's JSON has per-node detail, so it is the operator's view: it needs the operator token (the
coordinator prints the dashboard URL with it at start). /metrics carries aggregates only, with bounded label
sets (reasons, kinds), never one series per node; the per-node series are the operator's (with the token).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from trainnet.dashboard.data import run_view, service_snapshot
from trainnet.dashboard.metrics import CONTENT_TYPE, make_registry, render
from trainnet.dashboard.static_files import static_response


def add_views(app: FastAPI, rt: Any, guarded: Callable, ip_limit: Callable[[Request], None]) -> None:
    api = rt.api

    def view() -> dict[str, Any]:
        return run_view(rt.svc.state, time.time(), service_snapshot(rt.svc))

    public, operator = make_registry(view, per_node=False), make_registry(view, per_node=True)

    @app.get("/v1/dashboard")
    async def dashboard_json(request: Request, token: str | None = None) -> Response:
        async def run() -> dict:
            ip_limit(request)
            api.require_operator(request.headers, token)
            return await run_in_threadpool(view)
        return await guarded(request, run)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, token: str | None = None) -> Response:
        async def run() -> Response:
            ip_limit(request)
            registry = operator if api.is_operator(request.headers, token) else public
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
