"""``eeipu serve``: the tuning service (REST API + workers + scheduler).

Everything the service needs is checked before uvicorn starts (the settings, the database,
the address), so a bad ``--db`` is one line and exit code 2, not a traceback from inside the
server; a failure that still happens while the app starts is reported the same way. Once the
server listens, the URL it serves is printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from typing import Any

from api.config import Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the tuning service (REST API under /v1)")
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=int, default=8765, help="TCP port (1..65535)")
    p.add_argument(
        "--db",
        default=None,
        help="database URL (default: $EEIPU_DB or the SQLite file ./eeipu-data/eeipu.db)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="cache directory or fsspec URL (default: $EEIPU_CACHE or ./eeipu-data/cache)",
    )
    p.add_argument(
        "--cache-max-bytes",
        type=int,
        default=None,
        help="cache size budget in bytes (default: $EEIPU_CACHE_MAX_BYTES or unlimited)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: $EEIPU_WORKERS or 2)",
    )
    p.add_argument(
        "--dask",
        default=None,
        help="Dask scheduler address, e.g. tcp://host:8786 (default: $EEIPU_DASK or none: "
        "local workers)",
    )
    p.add_argument(
        "--http-workers",
        type=int,
        default=1,
        help="HTTP server processes; one of them runs the workers and scheduler",
    )
    p.add_argument("--log-level", default="warning", choices=LOG_LEVELS, help="log level")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.db is not None:
        if not args.db.strip():
            raise ValueError("--db is empty: give a database URL, or leave --db out")
        s.db_url = args.db
    if args.cache is not None:
        if not args.cache.strip():
            raise ValueError("--cache is empty: give a directory or URL, or leave --cache out")
        s.cache = args.cache
    if args.cache_max_bytes is not None:
        if args.cache_max_bytes < 1:
            raise ValueError(f"--cache-max-bytes must be >= 1, got {args.cache_max_bytes}")
        s.cache_max_bytes = args.cache_max_bytes
    if args.workers is not None:
        s.workers = args.workers
    if args.dask:
        s.dask = args.dask
    s.validate()
    return s


def check_database(url: str) -> None:
    """Open (and migrate) the database and ping it: its errors surface here, as one line."""
    from api.store import open_store

    store = open_store(url, pool_size=1)
    try:
        store.ping()
    finally:
        store.close()


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once, so that a taken port is an error before the server starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot resolve --host {host!r}: {e.strerror or e}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _StartupGuard:
    """ASGI wrapper that keeps a failed startup out of the log (it is reported as one line
    by ``run``) and remembers the exception."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.failure: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet_send(message: Any) -> None:
            if message.get("type") == "lifespan.startup.failed":
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, quiet_send)
        except BaseException as e:
            self.failure = e
            raise


class _NoStartupNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Application startup failed" not in record.getMessage()


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    if not 1 <= args.http_workers <= 64:
        raise ValueError("--http-workers must be 1..64")
    s = settings_from(args)
    if not s.api_token and not is_loopback(args.host):
        raise ValueError(
            f"refusing to bind {args.host}: without EEIPU_API_TOKEN the server only listens "
            "on loopback (set a token to serve other hosts)"
        )
    check_database(s.db_url)
    check_address(args.host, args.port)

    import uvicorn

    from api.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    url = url_of(args.host, args.port)
    if args.http_workers > 1:
        # Each process builds its app from the environment: hand the settings over there.
        os.environ["EEIPU_DB"] = s.db_url
        os.environ["EEIPU_CACHE"] = s.cache
        os.environ["EEIPU_WORKERS"] = str(s.workers)
        if s.cache_max_bytes:
            os.environ["EEIPU_CACHE_MAX_BYTES"] = str(s.cache_max_bytes)
        if s.dask:
            os.environ["EEIPU_DASK"] = s.dask
        print(f"eeipu: serving {url} (API under {url}/v1)", flush=True)
        uvicorn.run(
            "api.app:app_from_env",
            factory=True,
            workers=args.http_workers,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
        return 0
    guard = _StartupGuard(create_app(s))
    config = uvicorn.Config(
        guard,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    logging.getLogger("uvicorn.error").addFilter(_NoStartupNoise())

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"eeipu: serving {url} (API under {url}/v1)", flush=True)

    server = Server(config)
    try:
        server.run()
    except SystemExit as e:
        if server.started:
            raise
        raise ValueError(f"the server did not start on {args.host}:{args.port}") from e
    if not server.started:
        if guard.failure is not None:
            from api.cli import error_message

            why = error_message(guard.failure) or f"{type(guard.failure).__name__}: {guard.failure}"
            raise ValueError(f"the service did not start: {why}")
        raise ValueError(f"the server did not start on {args.host}:{args.port}")
    return 0
