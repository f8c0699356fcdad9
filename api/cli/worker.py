"""``eeipu worker``: run trials of managed studies from the store, on any machine.

Point it at the server's database (PostgreSQL for many machines) and at the same cache
(a shared directory or fsspec URL); start the server with ``--workers 0`` if only these run.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from api.cli.common import add_db_arg, cache_location, db_url_from, emit_json
from api.config import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run trials from the trial store (separate workers)")
    add_db_arg(p, "the server's database URL")
    p.add_argument(
        "--cache",
        default=None,
        help="cache directory or fsspec URL, shared with the server (default: $EEIPU_CACHE or "
        "./eeipu-data/cache)",
    )
    p.add_argument(
        "--cache-max-bytes",
        type=int,
        default=None,
        help="cache size budget in bytes (default: $EEIPU_CACHE_MAX_BYTES or unlimited)",
    )
    p.add_argument(
        "--study", type=int, default=None, help="only trials of this study (default: any study)"
    )
    p.add_argument(
        "--max-trials", type=int, default=None, help="exit after this many trials (default: never)"
    )
    p.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="exit after this many idle seconds (default: never)",
    )
    p.add_argument("--json", action="store_true", help="print a summary as one JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from api.store import open_store
    from api.worker import ExitPolicy, Worker

    s = Settings()
    if args.max_trials is not None and args.max_trials < 1:
        raise ValueError("--max-trials must be >= 1")
    if args.idle_exit is not None and not args.idle_exit >= 0:
        raise ValueError("--idle-exit must be >= 0")
    if args.study is not None and args.study < 1:
        raise ValueError(f"--study must be a positive study id, got {args.study}")
    if args.cache_max_bytes is not None and args.cache_max_bytes < 1:
        raise ValueError(f"--cache-max-bytes must be >= 1, got {args.cache_max_bytes}")
    cache = cache_location(args) if args.cache is not None else s.cache
    store = open_store(db_url_from(args) if args.db is not None else s.db_url, pool_size=2)
    w = Worker(
        store,
        cache,
        args.cache_max_bytes or s.cache_max_bytes,
        s.allowed_pipeline_modules,
        s.heartbeat_interval,
        study_id=args.study,
        exit_policy=ExitPolicy(max_trials=args.max_trials, idle_exit=args.idle_exit),
    )
    signal.signal(signal.SIGTERM, lambda *_: w.stop.set())
    try:
        done = w.run()
    except KeyboardInterrupt:
        done = w.done
    finally:
        store.close()
    if args.json:
        emit_json({"worker": w.id, "trials": done})
    else:
        print(f"worker {w.id}: {done} trials")
    return 0
