"""``eeipu bench suggest``: how long one EEIPU proposal takes, and how well its model fits.

A history of random configurations of ``synthetic-3stage`` (a third of them reusing a prefix
of an earlier one, as in a real run) is built once; every proper prefix of it is offered as
cached. At each size ``N`` (50, 100, 200, 1,000 and 2,000 observations by default) a fresh
EEIPU instance first proposes at ``N - repeats`` observations (the cold start: every GP
fitted from scratch), then one proposal is timed after each of the next ``repeats``
observations, as a tuning loop does: hyperparameters are refitted when the data grew by 10%
and reused otherwise. ``median_seconds`` is the median of those timed proposals (wall
clock); ``median_cpu_seconds`` the same in process CPU time, which a busy shared machine
does not inflate (torch runs one thread during ``ask``); ``cold_seconds`` the cold start's
time.

``fit`` says whether the speed was bought with a worse model: at each size the objective GP
is fitted from scratch on the ``N`` observations, as the optimizer fits it (its warped
targets, its options), and scored on ``--holdout`` further random observations of the same
kind: ``rmse`` of the predicted mean (objective units, on the warped scale the GP models),
``rmse_raw`` the same over the held-out points better than the clipping scale (where the
search refines), and ``log_likelihood`` the mean held-out log predictive density. Up to
``--full-gp-max`` observations the same is done for the exact GP on every observation
(``max_points: null``), under ``fit[N]["full"]``, with both fits' seconds. The log-cost
GPs are scored alike: ``log_cost_rmse`` and ``log_cost_log_likelihood`` (held-out log
costs, mean over stages), ``cost_points`` (the most rows a cost GP holds).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from api.cli.common import emit_json

if TYPE_CHECKING:
    from eeipu.bo import CostAwareBO

SIZES = (50, 100, 200, 1000, 2000)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "suggest", help="median time of one EEIPU proposal at 50-2,000 obs, and its model fit"
    )
    p.add_argument("--pipeline", default="synthetic-3stage")
    p.add_argument("--repeats", type=int, default=9, help="timed proposals per size")
    p.add_argument("--optimizer", default="eeipu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="history sizes to time"
    )
    p.add_argument(
        "--gp-options", default="{}", help='optimizer options as JSON, e.g. {"max_points": 800}'
    )
    p.add_argument("--holdout", type=int, default=200, help="held-out observations for fit")
    p.add_argument(
        "--full-gp-max",
        type=int,
        default=1000,
        help="largest size at which the exact GP's fit is measured too (0: never)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def build_history(pipe: Any, n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``n`` observations (a third reuse an earlier prefix) and every prefix as cached, in
    the order the observations first produced them."""
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


def _fresh_surrogates(opt: CostAwareBO, cost_model: str, max_points: int | None) -> Any:
    """Surrogates with ``opt``'s options and no fits yet (every GP fitted from scratch)."""
    from eeipu.surrogates import Surrogates

    return Surrogates(
        opt.space,
        cost_model,
        opt.options.refit_fraction,
        stage_additive=opt.options.kernel == "stage-additive",
        objective_noise=opt.options.objective_noise,
        max_points=max_points,
    )


def fit_quality(
    opt: CostAwareBO, train: Sequence[Any], held_out: Sequence[Any], max_points: int | None
) -> dict[str, float]:
    """Held-out quality of the objective GP fitted from scratch on ``train`` as ``opt``
    fits it, conditioned on at most ``max_points`` observations (``None``: all)."""
    import torch

    from eeipu.models import DTYPE
    from eeipu.warp import gap_scale, objective_targets, warmup_floor

    space, sign = opt.space, opt.sign()
    X = torch.tensor([space.encode(o.params) for o in train], dtype=DTYPE)
    y = torch.tensor([sign * float(o.value) for o in train], dtype=DTYPE)
    Xh = torch.tensor([space.encode(o.params) for o in held_out], dtype=DTYPE)
    yh = torch.tensor([sign * float(o.value) for o in held_out], dtype=DTYPE)
    scale = gap_scale(y, 0.5, warmup_floor(y, opt.n_warmup))
    target_h = -(y.max() - yh).clamp(min=0.0).clamp_max(scale)
    sur = _fresh_surrogates(opt, "none", max_points)
    t0 = time.perf_counter()
    gp = sur.objective(X, objective_targets(y, opt.n_warmup))
    with torch.no_grad():
        mean, std = gp.predict(Xh)
    seconds = time.perf_counter() - t0
    assert gp.model is not None
    noise = float(gp.model.likelihood.noise.detach().reshape(-1)[0]) * gp.y_std**2
    var = std**2 + noise
    err = mean - target_h
    loglik = -0.5 * (err**2 / var + torch.log(2 * math.pi * var))
    raw = target_h > -scale
    return {
        "rmse": float(err.pow(2).mean().sqrt()),
        "rmse_raw": float(err[raw].pow(2).mean().sqrt()) if bool(raw.any()) else math.nan,
        "log_likelihood": float(loglik.mean()),
        "points": float(gp.train_X.shape[0]),
        "fit_seconds": seconds,
    }


def cost_fit_quality(
    opt: CostAwareBO, train: Sequence[Any], held_out: Sequence[Any], max_points: int | None
) -> dict[str, float]:
    """Held-out quality of the log-cost GPs fitted from scratch on ``train`` as ``opt``
    fits them: RMSE of the predicted log cost and mean log predictive density, averaged
    over the stages, and the most rows a cost GP was conditioned on."""
    import torch

    from eeipu.models import DTYPE
    from eeipu.surrogates import COST_FLOOR

    space = opt.space
    sur = _fresh_surrogates(opt, "stages", max_points)
    t0 = time.perf_counter()
    models = sur.costs(train)
    Xh = torch.tensor([space.encode(o.params) for o in held_out], dtype=DTYPE)
    Ch = torch.tensor([o.stage_costs for o in held_out], dtype=DTYPE).clamp_min(COST_FLOOR)
    rmse, loglik, rows = [], [], 0
    with torch.no_grad():
        for k, (gp, sl) in enumerate(models):
            mean, std = gp.predict(Xh[:, sl])
            noise = 0.0
            if gp.model is not None:
                noise = float(gp.model.likelihood.noise.detach().reshape(-1)[0]) * gp.y_std**2
            var = std**2 + noise
            err = mean - Ch[:, k].log()
            rmse.append(float(err.pow(2).mean().sqrt()))
            loglik.append(float((-0.5 * (err**2 / var + torch.log(2 * math.pi * var))).mean()))
            rows = max(rows, int(gp.train_X.shape[0]))
    return {
        "log_cost_rmse": statistics.fmean(rmse),
        "log_cost_log_likelihood": statistics.fmean(loglik),
        "cost_points": float(rows),
        "cost_fit_seconds": time.perf_counter() - t0,
    }


def _options(text: str) -> dict[str, Any]:
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--gp-options must be a JSON object: {e}") from None
    if not isinstance(opts, dict):
        raise ValueError("--gp-options must be a JSON object")
    return opts


def run(args: argparse.Namespace) -> int:
    from eeipu import BudgetState, make_optimizer
    from eeipu.bo import CostAwareBO
    from pipelines import get_pipeline

    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if min(args.sizes) < 12 + args.repeats:
        raise ValueError(f"--sizes must each be >= {12 + args.repeats} (12 + --repeats)")
    if args.holdout < 2:
        raise ValueError("--holdout must be >= 2")
    gp_options = _options(args.gp_options)
    sizes = sorted(set(args.sizes))
    pipe = get_pipeline(args.pipeline)
    hist, cached = build_history(pipe, max(sizes) + args.holdout, args.seed)
    held_out, hist = hist[max(sizes) :], hist[: max(sizes)]
    full = sum(sum(o.stage_costs) for o in hist) / len(hist)
    n_cached = _cached_counts(hist, cached, pipe.stage_names)
    median: dict[str, float] = {}
    median_cpu: dict[str, float] = {}
    cold: dict[str, float] = {}
    allt: dict[str, list[float]] = {}
    fit: dict[str, dict[str, Any]] = {}
    for n in sizes:
        opt = make_optimizer(
            args.optimizer, pipe.space, pipe.direction, seed=args.seed, **gp_options
        )
        start = max(11, n - args.repeats)
        total = 100 * full * max(1.0, n / 200)

        def budget(m: int, total: float = total) -> BudgetState:
            spent = sum(o.cost_paid or 0.0 for o in hist[:m])
            warm = sum(o.cost_paid or 0.0 for o in hist[:10])
            return BudgetState(total=total, spent=spent, warmup_spent=warm)

        def held(m: int) -> list[Any]:  # the prefixes the first m observations cached
            return cached[: n_cached[m]]

        t0 = time.perf_counter()
        opt.ask(1, hist[:start], (), held(start), budget(start))
        cold[str(n)] = time.perf_counter() - t0
        times, cpu = [], []
        for m in range(start + 1, n + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            opt.ask(1, hist[:m], (), held(m), budget(m))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        median[str(n)] = statistics.median(times)
        median_cpu[str(n)] = statistics.median(cpu)
        allt[str(n)] = times
        if isinstance(opt, CostAwareBO):
            quality: dict[str, Any] = fit_quality(opt, hist[:n], held_out, opt.options.max_points)
            quality.update(cost_fit_quality(opt, hist[:n], held_out, opt.options.max_points))
            if n <= args.full_gp_max:
                quality["full"] = fit_quality(opt, hist[:n], held_out, None)
                quality["full"].update(cost_fit_quality(opt, hist[:n], held_out, None))
            fit[str(n)] = quality
    out = {
        "pipeline": args.pipeline,
        "optimizer": args.optimizer,
        "gp_options": gp_options,
        "median_seconds": median,
        "median_cpu_seconds": median_cpu,
        "cold_seconds": cold,
        "times_seconds": allt,
        "fit": fit,
        "n_cached_prefixes": {str(n): n_cached[n] for n in sizes},
    }
    if args.json:
        emit_json(out)
    else:
        for n in sizes:
            k = str(n)
            line = (
                f"{n:>5} observations: median {median[k]:.3f}s wall, {median_cpu[k]:.3f}s CPU "
                f"(cold start {cold[k]:.3f}s)"
            )
            if k in fit:
                q = fit[k]
                line += f"; held-out RMSE {q['rmse']:.4f}, log-lik {q['log_likelihood']:.3f}"
                if "full" in q:
                    f = q["full"]
                    line += f" (exact GP {f['rmse']:.4f}, {f['log_likelihood']:.3f})"
            print(line)
    return 0


def _cached_counts(hist: Sequence[Any], cached: Sequence[Any], stages: Sequence[str]) -> list[int]:
    """``counts[m]``: how many of ``cached`` (in first-production order) the first ``m``
    observations of ``hist`` produced."""
    keys = [(c.depth, repr(c.params)) for c in cached]
    first = {k: i for i, k in enumerate(keys)}
    counts, done = [0], 0
    for o in hist:
        for d in range(1, len(stages)):
            k = (d, repr({s: o.params[s] for s in stages[:d]}))
            done = max(done, first.get(k, -1) + 1)
        counts.append(done)
    return counts
