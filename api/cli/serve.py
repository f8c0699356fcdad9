"""``eeipu serve``: the tuning service (REST API + workers + scheduler)."""

from __future__ import annotations

import argparse
import ipaddress
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
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        create_app(s),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0
