"""The dashboard's static files, shipped inside the package and served by name from a fixed list.

    static_response("app.js")     # a starlette Response, or ApiError 404 for any other name
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response

from trainnet.server.limits import ApiError

STATIC_DIR = Path(__file__).parent / "static"
# Only these names are served: no path from the URL ever reaches the file system.
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}
# Nothing is loaded from elsewhere (no CDN, no fonts): the page works offline and leaks nothing.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


def static_response(name: str) -> Response:
    if name not in FILES:
        raise ApiError(404, "not_found", "no such file")
    data = (STATIC_DIR / name).read_bytes()
    return Response(data, media_type=FILES[name], headers={
        "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
