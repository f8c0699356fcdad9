"""``eeipu run PIPELINE --params JSON``: run one configuration through the cache."""

from __future__ import annotations

import argparse
import random
from typing import Any

from api.cli.common import add_cache_arg, emit_json, open_cache_from, parse_json_arg


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run one configuration of a pipeline through the cache")
    p.add_argument("pipeline", help="built-in name or package.module:attribute")
    p.add_argument("--params", help='JSON {"stage": {"param": value}}; omit with --random')
    p.add_argument("--random", action="store_true", help="sample a random configuration")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="run seed, part of the cache key; also seeds --random (default: none)",
    )
    p.add_argument("--no-reuse", action="store_true", help="recompute every stage")
    p.add_argument("--json", action="store_true", help="print the record as one JSON line")
    add_cache_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines import get_pipeline

    if args.params is not None and args.random:
        raise ValueError("give --params or --random, not both")
    pipe = get_pipeline(args.pipeline)
    if args.params is not None:
        params = parse_json_arg(args.params, "--params")
    elif args.random:
        params = pipe.space.sample(random.Random(args.seed))
    else:
        raise ValueError("give --params JSON (or --random)")
    if not isinstance(params, dict):
        raise ValueError('--params must be a JSON object {"stage": {"param": value}}')
    cache = open_cache_from(args)
    rec = pipe.run(params, cache=cache, seed=args.seed, reuse=not args.no_reuse)
    if args.json:
        emit_json(rec.to_dict())
        return 0
    print(f"pipeline {rec.pipeline}  reused {rec.reused_depth}/{len(rec.stages)} stages")
    for s in rec.stages:
        state = "skip" if s.skipped else ("hit " if s.hit else "miss")
        print(
            f"  {s.stage:<20} {state} key={s.key[:12]} cost={s.cost_seconds:.4f}s "
            f"load={s.load_seconds:.4f}s bytes={s.bytes}"
        )
    print(f"  total cost {rec.total_cost_seconds:.4f}s  wall {rec.wall_seconds:.3f}s")
    for k, v in sorted(rec.metrics.items()):
        print(f"  {k} = {v:.6g}")
    for e in rec.events:
        print(f"  note: {e}")
    return 0
