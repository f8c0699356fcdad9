"""``eeipu bench suggest``: how long one EEIPU proposal takes at 50, 100 and 200 observations.

A history of random configurations of ``synthetic-3stage`` (a third of them reusing a prefix
of an earlier one, as in a real run) is built once; every proper prefix of it is offered as
cached. At each size ``N`` a fresh EEIPU instance first proposes at ``N - repeats``
observations (the cold start: every GP fitted from scratch), then one proposal is timed after
each of the next ``repeats`` observations, as a tuning loop does: hyperparameters are
refitted when the data grew by 10% and reused otherwise. ``median_seconds`` is the median of
those timed proposals (wall clock); ``median_cpu_seconds`` the same in process CPU time,
which a busy shared machine does not inflate (torch runs one thread during ``ask``);
``cold_seconds`` the cold start's time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from api.cli.common import emit_json

SIZES = (50, 100, 200)


def register(sub: Any) -> None:
    p = sub.add_parser("suggest", help="median time of one EEIPU proposal at 50/100/200 obs")
    p.add_argument("--pipeline", default="synthetic-3stage")
    p.add_argument("--repeats", type=int, default=9, help="timed proposals per size")
    p.add_argument("--optimizer", default="eeipu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def build_history(pipe: Any, n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``n`` observations (a third reuse an earlier prefix) and every prefix as cached."""
    from eeipu import CachedPrefix, Observation

    rng = random.Random(seed)
    stages = pipe.stage_names
    hist: list[Any] = []
    for i in range(n):
        params = pipe.space.sample(rng)
        depth = 0
        if i >= 5 and rng.random() < 1 / 3:
            src = hist[rng.randrange(len(hist))].params
            depth = rng.randrange(1, len(stages))
            for s in stages[:depth]:
                params[s] = dict(src[s])
        rec = pipe.run(params)
        costs = [s.cost_seconds for s in rec.stages]
        paid = 0.001 * (depth > 0) + sum(costs[depth:])
        hist.append(Observation(rec.params, rec.metrics[pipe.objective], costs, depth, paid))
    seen: dict[tuple[int, str], Any] = {}
    for o in hist:
        for d in range(1, len(stages)):
            pp = {s: o.params[s] for s in stages[:d]}
            seen.setdefault((d, repr(pp)), CachedPrefix(d, pp, 0.001))
    return hist, list(seen.values())


def run(args: argparse.Namespace) -> int:
    from eeipu import BudgetState, make_optimizer
    from pipelines import get_pipeline

    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    pipe = get_pipeline(args.pipeline)
    hist, cached = build_history(pipe, max(SIZES), args.seed)
    full = sum(sum(o.stage_costs) for o in hist) / len(hist)
    median: dict[str, float] = {}
    median_cpu: dict[str, float] = {}
    cold: dict[str, float] = {}
    allt: dict[str, list[float]] = {}
    for n in SIZES:
        opt = make_optimizer(args.optimizer, pipe.space, pipe.direction, seed=args.seed)
        start = max(11, n - args.repeats)
        total = 100 * full

        def budget(m: int, total: float = total) -> BudgetState:
            spent = sum(o.cost_paid or 0.0 for o in hist[:m])
            warm = sum(o.cost_paid or 0.0 for o in hist[:10])
            return BudgetState(total=total, spent=spent, warmup_spent=warm)

        t0 = time.perf_counter()
        opt.ask(1, hist[:start], (), cached, budget(start))
        cold[str(n)] = time.perf_counter() - t0
        times, cpu = [], []
        for m in range(start + 1, n + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            opt.ask(1, hist[:m], (), cached, budget(m))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        median[str(n)] = statistics.median(times)
        median_cpu[str(n)] = statistics.median(cpu)
        allt[str(n)] = times
    out = {
        "pipeline": args.pipeline,
        "optimizer": args.optimizer,
        "median_seconds": median,
        "median_cpu_seconds": median_cpu,
        "cold_seconds": cold,
        "times_seconds": allt,
        "n_cached_prefixes": len(cached),
    }
    if args.json:
        emit_json(out)
    else:
        for n in SIZES:
            k = str(n)
            print(
                f"{n:>4} observations: median {median[k]:.3f}s wall, {median_cpu[k]:.3f}s CPU "
                f"(cold start {cold[k]:.3f}s)"
            )
    return 0
