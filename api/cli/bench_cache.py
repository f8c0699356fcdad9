"""``eeipu bench cache``: cache hit time against numpy.load, and key time."""

from __future__ import annotations

import argparse
from typing import Any

from api.cli.common import emit_json


def register(sub: Any) -> None:
    p = sub.add_parser("cache", help="hit time vs numpy.load for a large float32 output")
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--location", default=None, help="cache directory or fsspec URL to test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cache.bench import bench_cache

    if args.size_mb <= 0 or args.repeats <= 0:
        raise ValueError("--size-mb and --repeats must be positive")
    res = bench_cache(args.size_mb, args.repeats, args.location)
    if args.json:
        emit_json(res)
    else:
        for k, v in res.items():
            print(f"{k:>28}: {v}")
    return 0
