"""Pages a browser opens: the dashboard and the interactive API docs, all served offline.

* ``/dashboard/``: the static dashboard (``api/static/dashboard``: plain HTML and ES
  modules, no build step); ``/`` and ``/ui`` redirect there.
* ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their scripts, styles and icon served
  from ``/static/docs`` (the assets that the ``fastapi-offline`` package ships): nothing is
  loaded from a CDN or a font service, so they work on a machine without internet. The
  ReDoc bundle names one outside URL of its own (the logo of its "API docs by Redocly"
  footer); it is served from ``/static/redoc.js`` with that URL pointing at the local icon.

Every response says ``X-Content-Type-Options: nosniff`` (a JSON or CSV answer holding a
study's text is never run as a page or a script). The dashboard's pages also carry
``DASHBOARD_CSP``: scripts only from this server's own files (no inline script, no
``eval``), no plugin, no frame around it, requests only to this server; the docs pages carry
``DOCS_CSP`` (their one inline script is allowed by its hash, their styles inline).
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "static" / "dashboard"
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_STATIC = "/static/docs"
REDOC_JS = "/static/redoc.js"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
DASHBOARD_PATHS = ("/dashboard", "/ui")
NOSNIFF = ("X-Content-Type-Options", "nosniff")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def docs_csp(html: str) -> str:
    """The policy of a docs page: its inline scripts by their SHA-256, the rest local."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; worker-src 'self' "
        "blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    )


class SecurityHeaders:
    """ASGI middleware: ``nosniff`` on every response; on the dashboard's (``/``, ``/ui``,
    ``/dashboard/...``) ``DASHBOARD_CSP``, ``X-Frame-Options: DENY`` and
    ``Referrer-Policy: no-referrer`` (a header a route sets itself is kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        page = path == "/" or path.startswith(DASHBOARD_PATHS)

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                h = MutableHeaders(scope=msg)
                h.setdefault(*NOSNIFF)
                if page:
                    h.setdefault("Content-Security-Policy", DASHBOARD_CSP)
                    h.setdefault("X-Frame-Options", "DENY")
                    h.setdefault("Referrer-Policy", "no-referrer")
            await send(msg)

        await self.app(scope, receive, send_with_headers)


@cache
def redoc_bundle() -> bytes:
    """The ReDoc bundle with its footer logo pointing at the local icon."""
    text = (DOCS_ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
    return text.replace(REDOC_LOGO, f"{DOCS_STATIC}/favicon.png").encode("utf-8")


def install(app: FastAPI) -> None:
    """Mount the dashboard and the offline docs on ``app`` (none of it in the OpenAPI doc);
    start importing what the dashboard's importance needs (``api.report.digest.preload``)."""
    from api.report.digest import preload

    preload()
    app.add_middleware(SecurityHeaders)
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    def to_dashboard() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=307)

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return _with_csp(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
                # the online validator badge would call out to validator.swagger.io
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get(REDOC_JS, include_in_schema=False)
    def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript; charset=utf-8")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _with_csp(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=REDOC_JS,
                redoc_favicon_url=f"{DOCS_STATIC}/favicon.png",
                with_google_fonts=False,
            )
        )


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    html = bytes(page.body).decode("utf-8")
    page.headers["Content-Security-Policy"] = docs_csp(html)
    page.headers["Referrer-Policy"] = "no-referrer"
    return page
