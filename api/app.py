"""The FastAPI application: routers under ``/v1``, JSON errors, limits, background work.

``create_app(settings)`` wires the store (migrated on startup), the cache, the executor (local
worker processes or Dask) and the scheduler thread; all of it stops with the app.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import Settings
from api.service import Scheduler, ServiceError, StudyService

log = logging.getLogger("eeipu.api")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (by header, or while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        resp = JSONResponse(
            {
                "error": "request_too_large",
                "message": f"request body exceeds {self.max_bytes} bytes",
            },
            413,
        )
        await resp({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _err(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": code, "message": message, **extra}, status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:10]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return _err(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()[:50]
        ]
        return _err(422, "invalid_request", _validation_message(exc), detail=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _err(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return _err(500, "internal", f"internal error ({type(exc).__name__})")


def create_app(settings: Settings | None = None, background: bool = True) -> FastAPI:
    """The service app.

    Args:
        settings: configuration (default: from the environment).
        background: run workers and the scheduler (False: a read/ask/tell-only API).
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
        executor: Executor = NoExecutor()
        if background and settings.dask:
            from api.execution.dask import DaskExecutor

            executor = DaskExecutor(store, settings, settings.dask)
        elif background and settings.workers > 0:
            from api.execution.local import LocalWorkerPool

            executor = LocalWorkerPool(store, settings, settings.workers)
        service = StudyService(store, settings, cache, default_parallelism=executor.capacity)
        scheduler = Scheduler(service, settings.scheduler_interval) if background else None
        app.state.settings = settings
        app.state.service = service
        app.state.executor = executor
        app.state.scheduler = scheduler
        executor.start()
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()
            executor.stop()
            service.tells.close()
            store.close()

    app = FastAPI(
        title="eeipu",
        summary="Memoization-aware tuning of staged ML pipelines",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
    )
    install_error_handlers(app)
    from api.routes import cache as cache_routes
    from api.routes import health, pipelines, studies, trials, workers

    app.include_router(health.router)
    for r in (studies.router, trials.router, pipelines.router, cache_routes.router, workers.router):
        app.include_router(r, prefix="/v1")
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
