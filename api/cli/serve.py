"""``eeipu serve``: the tuning service (REST API + workers + scheduler)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from typing import Any

from api.config import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the tuning service (REST API under /v1)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--db", default=None, help="database URL (default: $EEIPU_DB or SQLite)")
    p.add_argument("--cache", default=None, help="cache directory or fsspec URL")
    p.add_argument("--cache-max-bytes", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default 2)")
    p.add_argument("--dask", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    p.add_argument(
        "--http-workers",
        type=int,
        default=1,
        help="HTTP server processes (default 1); one of them runs the workers and scheduler",
    )
    p.add_argument("--log-level", default="warning")
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
    if args.db:
        s.db_url = args.db
    if args.cache:
        s.cache = args.cache
    if args.cache_max_bytes is not None:
        s.cache_max_bytes = args.cache_max_bytes
    if args.workers is not None:
        s.workers = args.workers
    if args.dask:
        s.dask = args.dask
    s.validate()
    return s


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from api.app import create_app

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    s = settings_from(args)
    if not s.api_token and not is_loopback(args.host):
        raise ValueError(
            f"refusing to bind {args.host}: without EEIPU_API_TOKEN the server only listens "
            "on loopback (set a token to serve other hosts)"
        )
    if not 1 <= args.http_workers <= 64:
        raise ValueError("--http-workers must be 1..64")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if args.http_workers > 1:
        # Each process builds its app from the environment: hand the settings over there.
        os.environ["EEIPU_DB"] = s.db_url
        os.environ["EEIPU_CACHE"] = s.cache
        os.environ["EEIPU_WORKERS"] = str(s.workers)
        if s.cache_max_bytes:
            os.environ["EEIPU_CACHE_MAX_BYTES"] = str(s.cache_max_bytes)
        if s.dask:
            os.environ["EEIPU_DASK"] = s.dask
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
    uvicorn.run(
        create_app(s),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0
