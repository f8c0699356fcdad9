"""The FastAPI application: routers under ``/v1``, JSON errors, the edge guard, background work.

``create_app(settings)`` wires the store (migrated on startup), the cache, the executor (local
worker processes or Dask) and the scheduler thread; all of it stops with the app.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import Settings, data_dir
from api.errors import ServiceError, status_of
from api.schemas import json_safe
from api.service import Scheduler, StudyService

log = logging.getLogger("eeipu.api")


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# (status, error code, message) of a request the edge guard refuses
_Refusal = tuple[int, str, str]
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_of(value: str) -> str:
    """The host name of a ``Host`` header or an origin's authority, lowercased, no port."""
    v = value.strip().lower()
    if v.startswith("["):  # [::1]:8000
        return v[1 : v.find("]")] if "]" in v else v
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _is_json(content_type: str) -> bool:
    mt = content_type.split(";", 1)[0].strip().lower()
    return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))


class EdgeGuard:
    """What every request passes before routing, in this order:

    1. ``Host`` must name this server (loopback names, the address it is bound to, or
       ``allowed_hosts``) while no token is set or ``allowed_hosts`` is given, else 400: a
       page on another site that rebinds its DNS name to 127.0.0.1 reaches the loopback
       server with its own name in ``Host``.
    2. A mutating request with an ``Origin`` of another host gets 403 (a cross-site form or
       ``fetch`` with ``Content-Type: text/plain`` needs no preflight).
    3. With a token set, a mutating request without the right bearer token gets 401 before
       anything reads its body (a body's errors are nobody else's business).
    4. A mutating request with a body must say ``Content-Type: application/json`` (415).
    5. The body is read here up to ``max_bytes``; more (by header, or chunked) is a 413.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_bytes = settings.max_request_bytes
        self.allowed = _LOOPBACK | {_host_of(h) for h in settings.allowed_hosts}
        self.check_host = not settings.api_token or bool(settings.allowed_hosts)

    def _host_ok(self, host: str, scope: Scope) -> bool:
        if host in self.allowed:
            return True
        server = scope.get("server")
        return server is not None and host == str(server[0]).lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name, value)
        refusal = self._host_refusal(headers, scope)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        if scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        refusal = (
            self._origin_refusal(headers, scope)
            or self._auth_refusal(headers)
            or self._body_header_refusal(headers)
        )
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        done = False

        async def replay() -> Message:
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _host_refusal(self, headers: Mapping[bytes, bytes], scope: Scope) -> _Refusal | None:
        """Step 1: a ``Host`` this server does not serve (400)."""
        host = headers.get(b"host")
        if self.check_host and host is not None:
            name = _host_of(host.decode("latin-1"))
            if not self._host_ok(name, scope):
                return 400, "bad_host", f"host {name[:100]!r} is not served here"
        return None

    def _origin_refusal(self, headers: Mapping[bytes, bytes], scope: Scope) -> _Refusal | None:
        """Step 2: a mutating request from another site's origin (403)."""
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            oname = _host_of(text.split("://", 1)[1]) if "://" in text else ""
            if not oname or not self._host_ok(oname, scope):
                return 403, "cross_origin", f"cross-site request from {text[:100]!r} refused"
        return None

    def _auth_refusal(self, headers: Mapping[bytes, bytes]) -> _Refusal | None:
        """Step 3: a missing or wrong bearer token while one is set (401)."""
        token = self.settings.api_token
        if token:
            from api.deps import token_ok

            auth = headers.get(b"authorization")
            if not token_ok(token, None if auth is None else auth.decode("latin-1")):
                return (
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                )
        return None

    def _body_header_refusal(self, headers: Mapping[bytes, bytes]) -> _Refusal | None:
        """Steps 4 and 5 by the headers: a bad or too large length (400, 413), not JSON (415)."""
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return 400, "bad_request", "Content-Length is not a number"
            if n > self.max_bytes:
                return self._too_large_refusal()
        has_body = chunked or (length is not None and n > 0)
        ctype = headers.get(b"content-type")
        if (has_body or ctype is not None) and not _is_json((ctype or b"").decode("latin-1")):
            return 415, "unsupported_media_type", "the request body must be application/json"
        return None

    async def _read_body(self, receive: Receive, send: Send) -> bytearray | None:
        """Step 5: the body, up to ``max_bytes`` (``None``: refused with 413, or client gone)."""
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return None
            body += msg.get("body", b"")
            more = bool(msg.get("more_body"))
            if len(body) > self.max_bytes:
                await self._too_large(send)
                return None
        return body

    def _too_large_refusal(self) -> _Refusal:
        return 413, "request_too_large", f"request body exceeds {self.max_bytes} bytes"

    async def _too_large(self, send: Send) -> None:
        await _send_error(send, *self._too_large_refusal())


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    resp = JSONResponse({"error": code, "message": message}, status, headers=headers)
    await resp({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _err(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(
        json_safe({"error": code, "message": message, **extra}), status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:10]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of this path answers (asked of the router itself, so
    included routers count)."""
    from starlette.routing import Match

    allowed = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        probe = {**scope, "method": method}
        if any(r.matches(probe)[0] == Match.FULL for r in app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    """The one place where errors become HTTP: domain errors by ``status_of``, validation
    errors as 422, framework errors with their status (and headers, e.g. ``Allow``)."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return _err(status_of(exc), exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()[:50]
        ]
        return _err(422, "invalid_request", _validation_message(exc), detail=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route of the path; each method has its own.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return _err(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return _err(500, "internal", f"internal error ({type(exc).__name__})")


def _document(app: FastAPI, settings: Settings) -> None:
    """Make the OpenAPI document say what this server enforces: its budget and size limits
    (from the settings, so a schema-valid request is one the server accepts), the bearer
    token on mutating operations when one is set, and the error body of every 4xx."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        comps = doc.setdefault("components", {})
        schemas = comps.setdefault("schemas", {})
        create = schemas.get("StudyCreate", {}).get("properties", {})
        limits = {
            "budget_seconds": ("maximum", settings.max_budget_seconds),
            "max_trials": ("maximum", settings.max_trials_limit),
            "parallelism": ("maximum", settings.max_parallelism),
        }
        for field, (kw, value) in limits.items():
            prop = create.get(field)
            if prop is None:
                continue
            for sub in prop.get("anyOf", [prop]):
                if sub.get("type") in ("number", "integer"):
                    sub[kw] = min(sub.get(kw, value), value)
        if settings.api_token:
            comps["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for ops in doc.get("paths", {}).values():
            for method, op in ops.items():
                if not isinstance(op, dict):
                    continue
                if settings.api_token and method.upper() not in _SAFE_METHODS:
                    op["security"] = [{"bearer": []}]
                resp = op.get("responses", {})
                if "422" in resp:
                    resp["422"] = {
                        "description": "invalid request",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorOut"}
                            }
                        },
                    }
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


class LeaderLock:
    """Exactly one process of a multi-process server runs workers and the scheduler: the one
    holding an exclusive ``flock`` on a file next to the data. The kernel releases it when
    that process dies, and another process of the server takes over."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def close(self) -> None:
        os.close(self._fd)  # releases the lock


def leader_lock_path(settings: Settings) -> Path:
    digest = hashlib.sha256(settings.db_url.encode()).hexdigest()[:16]
    return data_dir() / f"serve-leader-{digest}.lock"


def create_app(settings: Settings | None = None, background: bool | str = True) -> FastAPI:
    """The service app.

    Args:
        settings: configuration (default: from the environment).
        background: True: run workers and the scheduler; False: a read/ask/tell-only API;
            ``"leader"``: run them only while this process holds the leader lock (one of
            several HTTP processes of ``eeipu serve --http-workers N``).
    """
    settings = settings or Settings()
    settings.validate()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from api.execution import Executor, NoExecutor
        from api.store import open_store

        store = open_store(settings.db_url, pool_size=16)
        cache = None
        try:
            from cache import open_cache

            cache = open_cache(settings.cache, max_bytes=settings.cache_max_bytes)
        except Exception as e:
            log.warning("cache %s unavailable: %s", settings.cache, e)
        guess = 1 if settings.dask else max(1, settings.workers)
        service = StudyService(store, settings, cache, default_parallelism=guess)
        app.state.settings = settings
        app.state.service = service
        app.state.executor = NoExecutor()
        app.state.scheduler = None
        started: list[Any] = []

        def start_background() -> None:
            executor: Executor = NoExecutor()
            if settings.dask:
                from api.execution.dask import DaskExecutor

                executor = DaskExecutor(store, settings, settings.dask)
            elif settings.workers > 0:
                from api.execution.local import LocalWorkerPool

                executor = LocalWorkerPool(store, settings, settings.workers)
            service.default_parallelism = executor.capacity
            scheduler = Scheduler(service, settings.scheduler_interval)
            executor.start()
            scheduler.start()
            app.state.executor, app.state.scheduler = executor, scheduler
            started.extend([scheduler, executor])

        stop_election = threading.Event()
        election: threading.Thread | None = None
        lock: LeaderLock | None = None
        if background is True:
            start_background()
        elif background == "leader":
            lock = LeaderLock(leader_lock_path(settings))

            def elect() -> None:
                while not stop_election.is_set():
                    assert lock is not None
                    if lock.try_acquire():
                        log.warning("process %s leads: workers and scheduler run here", os.getpid())
                        start_background()
                        return
                    stop_election.wait(1.0)

            election = threading.Thread(target=elect, name="eeipu-election", daemon=True)
            election.start()
        try:
            yield
        finally:
            stop_election.set()
            if election is not None:
                election.join(5)
            for part in started:
                part.stop()
            service.tells.close()
            store.close()
            if lock is not None:
                lock.close()

    app = FastAPI(
        title="eeipu",
        summary="Memoization-aware tuning of staged ML pipelines",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,  # served offline by api.routes.ui (no CDN)
        redoc_url=None,
    )
    install_error_handlers(app)
    from api.routes import cache as cache_routes
    from api.routes import dashboard, exports, health, pipelines, studies, trials, ui, workers

    app.include_router(health.router)
    for r in (studies.router, trials.router, pipelines.router, cache_routes.router, workers.router):
        app.include_router(r, prefix="/v1")
    app.include_router(exports.router, prefix="/v1")
    app.include_router(dashboard.router, prefix="/v1")
    ui.install(app)
    _document(app, settings)
    app.add_middleware(EdgeGuard, settings=settings)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn api.app:app_from_env --factory`` (settings from the
    environment; one process of several leads the background work)."""
    return create_app(Settings(), background="leader")
