"""The FastAPI application: routers under ``/v1``, JSON errors, limits, background work.

``create_app(settings)`` wires the store (migrated on startup), the cache, the executor (local
worker processes or Dask) and the scheduler thread; all of it stops with the app.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import Settings, data_dir
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


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn api.app:app_from_env --factory`` (settings from the
    environment; one process of several leads the background work)."""
    return create_app(Settings(), background="leader")
