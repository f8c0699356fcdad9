"""The optimizer benchmark: every optimizer at equal cost budgets, over seeds and pipelines.

Each (pipeline, optimizer, seed) run is a fresh ``api.tuning.tune`` with its own empty cache
directory, so reuse comes only from what that run computed. Results: a CSV of every trial, a
markdown table (means and 95% t-intervals over seeds), a PNG per pipeline of best-so-far
against cumulative cost, and the paper's two metrics of EEIPU against each baseline:

* % more candidates evaluated within the budget: ``mean n_trials(EEIPU) / mean n_trials(B) - 1``;
* % larger improvement of the objective from the end of warm-up:
  ``mean gain(EEIPU) / mean gain(B) - 1``, where ``gain`` is the best value at the end of the
  run minus the best value after the warm-up trials (sign-adjusted when minimising).

Optuna's TPE (``tpe``) and GP sampler (``optuna-gp``) run as outside references when optuna
is installed. Every finished run is also appended to ``runs.jsonl`` as it finishes, so an
interrupted benchmark keeps its runs.

Real pipelines (measured costs) add what noise demands and what a user compares:

* the optimizers of one seed run one after another (seed-major order), and every run records
  the machine's load average (``os.getloadavg``) at its start and end;
* every trial records its wall time since the run started (proposal time included), so runs
  are also compared at EQUAL WALL TIME (each seed's shortest run), not only at equal spend;
* ``warm_cache``: a second scenario, reported apart. For each (optimizer, seed) the pipelines
  are tuned one after another in ONE cache, so the later studies start with the earlier
  ones' cached stages (the unlearning pipelines share featurize and train); the first study
  of the chain is the cold scenario's run;
* ``holdout_seeds``: the best configuration of every run is evaluated again on held-out run
  seeds (new splits), reporting ``holdout_metric`` (the unlearning pipelines'
  retrain-based ``retrain_score``): the tuning objective alone can flatter. Tuning then
  uses ``run_seed`` (default 1000), never a held-out seed.
"""

from __future__ import annotations

import copy
import csv
import inspect
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.optuna_adapter import OptunaGP, OptunaTPE, OptunaTPEMemo
from eeipu.base import Optimizer
from eeipu.space import SearchSpace

__all__ = [
    "Execution",
    "OptunaGP",
    "OptunaTPE",
    "RealOptions",
    "default_budget",
    "run_benchmark",
    "run_one",
]

BASELINES = ("ei", "eipu", "carbo", "random")
CSV_FIELDS = [
    "pipeline",
    "optimizer",
    "seed",
    "trial",
    "phase",
    "value",
    "best_so_far",
    "cost_paid",
    "cumulative_cost",
    "reused_depth",
    "planned_reuse",
    "predicted_cost",
    "ask_seconds",
    "wall_elapsed",
    "n_stages",
    "stage_seconds",
    "scenario",
]
OUTSIDE = ("tpe", "optuna-gp")  # Optuna's samplers: outside references (added by default)
BENCH_OPTIMIZERS = (*OUTSIDE, "tpe-memo")  # the benchmark's own, beside the product's


GP_OPTIMIZERS = ("eeipu", "ei", "eipu", "carbo")


def _make(
    name: str,
    space: SearchSpace,
    direction: str,
    seed: int,
    n_warmup: int,
    gp_kwargs: Mapping[str, Any] | None = None,
) -> Optimizer:
    if name == "tpe":
        return OptunaTPE(space, direction=direction, seed=seed, n_warmup=n_warmup)
    if name == "optuna-gp":
        return OptunaGP(space, direction=direction, seed=seed, n_warmup=n_warmup)
    if name == "tpe-memo":
        return OptunaTPEMemo(space, direction=direction, seed=seed, n_warmup=n_warmup)
    from eeipu.registry import make_optimizer

    kw = dict(gp_kwargs or {}) if name in GP_OPTIMIZERS else {}
    return make_optimizer(name, space, direction=direction, seed=seed, n_warmup=n_warmup, **kw)


def default_budget(pipeline: Any, n_full_runs: float = 50.0, seed: int = 0) -> float:
    """``n_full_runs`` times the mean cost of a full run of random configurations."""
    rng = random.Random(seed)
    costs = [pipeline.run(pipeline.space.sample(rng)).total_cost_seconds for _ in range(20)]
    return round(float(n_full_runs * statistics.mean(costs)), 1)


@dataclass(frozen=True)
class RealOptions:
    """What the real-pipeline benchmark adds to a run (the defaults change nothing).

    Attributes:
        run_seed: the pipeline run seed of the tuning (``None``: the pipeline's default).
        holdout_seeds: evaluate each run's best configuration on run seeds ``0..N-1``.
        holdout_metric: the metric read from those evaluations.
        count_proposal_time: the budget also pays the optimizer's proposal time (equal
            wall time; needs ``api.tuning.tune``'s ``count_proposal_time``).
        warm_cache: also run the warm-cache scenario (pipelines in one cache, in order).
        fix: ``--fix`` items (``STAGE`` at the pipeline's defaults, ``STAGE.PARAM=VALUE``):
            parameters kept out of every optimizer's search. Leading stages fixed whole are
            computed once per pipeline (``upstream``) and every run tunes the stages after
            them, fed their output (``tuned_pipeline``): identical for every optimizer, and
            budgets pay only for what the optimizers choose.
        upstream: ``{pipeline: cache directory}`` of those pre-computed stages (filled by
            ``run_benchmark``).
        retrains: the unlearning pipelines' retrained ensemble size (``None``: their
            default); with ``references`` (LiRA reference models), what the train stage
            trains besides the original and retrained models, so what one train run costs.
    """

    run_seed: int | None = None
    holdout_seeds: int = 0
    holdout_metric: str = "retrain_score"
    count_proposal_time: bool | None = None
    warm_cache: bool = False
    fix: tuple[str, ...] = ()
    upstream: Mapping[str, str] = field(default_factory=dict)
    holdout_cache: str | None = None
    retrains: int | None = None
    references: int | None = None


_built: dict[tuple[str, int | None, int | None], Any] = {}


def _base_pipeline(name: str, real: RealOptions) -> Any:
    """``name`` from the registry, or an unlearning pipeline with ``real``'s train sizes."""
    from pipelines import get_pipeline
    from pipelines.unlearning.names import METHOD_NAMES

    if real.retrains is None and real.references is None:
        return get_pipeline(name)
    if name not in METHOD_NAMES:
        raise ValueError(f"--retrains and --references apply to unlearning pipelines, not {name!r}")
    key = (name, real.retrains, real.references)
    if key not in _built:
        from pipelines.unlearning.pipelines import (
            DEFAULT_REFERENCES,
            DEFAULT_RETRAINS,
            make_pipeline,
        )

        _built[key] = make_pipeline(
            name,
            n_retrains=DEFAULT_RETRAINS if real.retrains is None else real.retrains,
            n_references=DEFAULT_REFERENCES if real.references is None else real.references,
        )
    return _built[key]


def bench_pipeline(name: str, real: RealOptions) -> Any:
    """The pipeline ``name`` with ``real.fix`` applied (single-choice fixed parameters)."""
    from api.cli.tune import parse_fixed, watched_pipeline

    pipe = _base_pipeline(name, real)
    if not real.fix:
        return pipe
    return watched_pipeline(pipe, parse_fixed(pipe, real.fix), None)


def tuned_pipeline(name: str, real: RealOptions) -> Any:
    """What a run tunes: with a pre-computed fixed upstream, only the stages after it, the
    first of them fed the upstream's output (its cost is paid once, outside every run's
    budget, so budgets pay only for what the optimizers choose); else ``bench_pipeline``."""
    from cache import open_cache
    from eeipu.space import SearchSpace
    from pipelines import Stage

    pipe = bench_pipeline(name, real)
    upstream = real.upstream.get(name)
    depth = fixed_depth(pipe)
    if not upstream or depth == 0 or depth >= len(pipe.stages):
        return pipe
    params = pipe.canonical(pipe.space.sample(random.Random(0)))
    key = pipe.keys(params, real.run_seed)[depth - 1]
    hit = open_cache(upstream).get(key)
    if hit is None:
        raise RuntimeError(f"{name}: the fixed upstream is missing from its cache")
    value = hit.value
    first = pipe.stages[depth]
    fn = first.fn

    def fed(parent: Any, **kw: Any) -> Any:
        return fn(value, **kw)

    head = Stage(
        first.name, fed, first.space, version=first.version, load_seconds=first.load_seconds
    )
    head.wants_seed = first.wants_seed
    new = copy.copy(pipe)
    new.stages = [head, *pipe.stages[depth + 1 :]]
    new.space = SearchSpace([(st.name, st.space) for st in new.stages])
    new.defaults = {k: v for k, v in pipe.defaults.items() if k in new.space.stage_names}
    fp = f"{pipe.fingerprint}|upstream={key}"
    new._fingerprint, new._fp_value = fp, fp
    return new


def fixed_depth(pipe: Any) -> int:
    """How many leading stages have no choice left (every parameter single-choice)."""
    from eeipu.space import Categorical

    d = 0
    for st in pipe.stages:
        if not all(isinstance(p, Categorical) and len(p.choices) == 1 for p in st.space.values()):
            break
        d += 1
    return d


def precompute_upstream(pipe: Any, run_seed: int | None, directory: str) -> int:
    """Compute ``pipe``'s fixed leading stages into the cache at ``directory`` (a full run,
    then the deeper stages' entries deleted); the number of stages kept."""
    import random as random_

    from cache import open_cache

    depth = fixed_depth(pipe)
    if depth == 0:
        return 0
    params = pipe.space.sample(random_.Random(0))  # the fixed stages have one choice
    cache = open_cache(directory)
    pipe.run(params, cache=cache, seed=run_seed)
    for key in pipe.keys(pipe.canonical(params), run_seed)[depth:]:
        cache.delete(key)
    return depth


def run_one(
    pipeline_name: str,
    optimizer: str,
    seed: int,
    budget: float,
    n_warmup: int = 10,
    gp_kwargs: Mapping[str, Any] | None = None,
    max_trials: int | None = None,
    real: RealOptions = RealOptions(),
    cache_dir: str | None = None,
    scenario: str = "cold",
) -> dict[str, Any]:
    """One tuning run in a fresh cache (or in ``cache_dir``, kept); its rows and summary.

    ``max_trials`` caps the run (every optimizer alike): where cheap reused prefixes allow
    thousands of trials, the cap keeps the GP's cubic cost bounded; a capped run reports
    ``capped`` and spends less than the budget.
    """
    from api.tuning import tune
    from cache import open_cache

    pipe = tuned_pipeline(pipeline_name, real)
    tmp = cache_dir or tempfile.mkdtemp(prefix="eeipu-bench-opt-")
    t0 = time.perf_counter()
    ends: list[float] = []
    extra: dict[str, Any] = {}
    if real.count_proposal_time is not None:
        extra["count_proposal_time"] = real.count_proposal_time
    load0 = os.getloadavg()
    try:
        opt = _make(optimizer, pipe.space, pipe.direction, seed, n_warmup, gp_kwargs)
        res = tune(
            pipe,
            opt,
            budget,
            cache=open_cache(tmp),
            max_trials=max_trials,
            run_seed=real.run_seed,
            sinks=[lambda _t: ends.append(time.perf_counter() - t0)],
            **extra,
        )
    finally:
        if cache_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    rows = [
        {
            "pipeline": pipeline_name,
            "optimizer": optimizer,
            "seed": seed,
            "trial": t.number,
            "phase": t.phase,
            "value": t.value,
            "best_so_far": t.best_value,
            "cost_paid": t.cost_paid,
            "cumulative_cost": t.cumulative_cost,
            "reused_depth": t.reused_depth,
            "planned_reuse": t.planned_reuse,
            "predicted_cost": t.predicted_cost,
            "ask_seconds": t.ask_seconds,
            "wall_elapsed": ends[i] if i < len(ends) else wall,
            "n_stages": len(pipe.stages),
            "stage_seconds": sum(t.stage_costs),
            "scenario": scenario,
        }
        for i, t in enumerate(res.trials)
    ]
    out = summarise_run(rows, pipe.direction, budget, n_warmup)
    out["max_trials"] = max_trials
    out["capped"] = max_trials is not None and len(rows) >= max_trials
    out["scenario"] = scenario
    out["wall_seconds"] = wall
    out["load_start"], out["load_end"] = list(load0), list(load1)
    out["run_seed"] = real.run_seed
    best = res.best()
    if real.holdout_seeds > 0 and best is not None:
        full = bench_pipeline(pipeline_name, real)  # every stage: a held-out seed is a new split
        fixed = full.space.sample(random.Random(0))
        params = {s: dict(best.params.get(s, fixed[s])) for s in full.space.stage_names}
        out["holdout"] = holdout_score(full, params, real)
    return out


def holdout_score(pipe: Any, params: Mapping[str, Any], real: RealOptions) -> dict[str, Any]:
    """``real.holdout_metric`` of ``params`` on run seeds ``0..holdout_seeds-1`` (each a new
    split and training), in a cache of its own; ``mean`` over the seeds."""
    from cache import open_cache

    if real.holdout_metric not in pipe.metrics:
        return {"metric": real.holdout_metric, "values": [], "mean": math.nan}
    tmp = real.holdout_cache or tempfile.mkdtemp(prefix="eeipu-bench-holdout-")
    try:  # a shared holdout cache computes a fixed upstream once per held-out seed
        cache = open_cache(tmp)
        vals = [
            float(pipe.run(params, cache=cache, seed=s).metrics[real.holdout_metric])
            for s in range(real.holdout_seeds)
        ]
    finally:
        if real.holdout_cache is None:
            shutil.rmtree(tmp, ignore_errors=True)
    finite = [v for v in vals if math.isfinite(v)]
    return {
        "metric": real.holdout_metric,
        "values": vals,
        "mean": statistics.fmean(finite) if finite else math.nan,
    }


def summarise_run(
    rows: Sequence[Mapping[str, Any]], direction: str, budget: float, n_warmup: int = 10
) -> dict[str, Any]:
    """A run's figures from its per-trial rows (``CSV_FIELDS``), in trial order."""
    sign = 1.0 if direction == "maximize" else -1.0
    values = [None if r["value"] in (None, "") else float(r["value"]) for r in rows]
    vals = [sign * v for v in values if v is not None]
    warm = [sign * v for v in values[:n_warmup] if v is not None]
    final = max(vals) if vals else math.nan
    warm_best = max(warm) if warm else math.nan
    spent = sum(float(r["cost_paid"]) for r in rows)
    model_asks = [float(r["ask_seconds"]) for r in rows if r["phase"] == "model"]
    first = rows[0] if rows else {}
    n_exec = sum(int(r.get("n_stages") or 0) for r in rows)
    n_hit = sum(min(int(r["reused_depth"]), int(r.get("n_stages") or 0)) for r in rows)
    return {
        "pipeline": first.get("pipeline"),
        "optimizer": first.get("optimizer"),
        "seed": int(first.get("seed", 0)),
        "budget": budget,
        "n_trials": len(rows),
        "final_best": sign * final,
        "gain": final - warm_best,
        "reuse_fraction": sum(int(r["reused_depth"]) > 0 for r in rows) / max(1, len(rows)),
        "cost_spent": spent,
        "overshoot": max(0.0, spent - budget),
        "ask_median": statistics.median(model_asks) if model_asks else math.nan,
        "cache_share": n_hit / n_exec if n_exec else math.nan,
        "rows": [dict(r) for r in rows],
    }


def _ci(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval."""
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, half


def _fmt(m: float, h: float, digits: int = 4) -> str:
    if not math.isfinite(m):
        return "-"
    if not math.isfinite(h):
        return f"{m:.{digits}g}"
    return f"{m:.{digits}g} ± {h:.2g}"


def equal_spend(
    runs: Sequence[Mapping[str, Any]], pipeline: str, optimizers: Sequence[str]
) -> dict[str, Any] | None:
    """Trials and best value of each optimizer within the same spend, seed by seed.

    For each seed, the spend is the least that any capped run of that seed spent (runs of
    one seed share their warm-up); seeds without a capped run are left out. ``None`` when
    no run of ``pipeline`` was capped. Best values are in the pipeline's own units.
    """
    mine = [r for r in runs if r["pipeline"] == pipeline]
    spends: dict[int, float] = {}
    for r in mine:
        if r.get("capped"):
            s = int(r["seed"])
            spends[s] = min(spends.get(s, math.inf), float(r["cost_spent"]))
    if not spends:
        return None
    out: dict[str, Any] = {
        "spend_by_seed": {str(k): v for k, v in sorted(spends.items())},
        "spend": statistics.fmean(spends.values()),
    }
    out["optimizers"] = _within_limits(mine, optimizers, spends, "cumulative_cost")
    return out


def _within_limits(
    runs: Sequence[Mapping[str, Any]],
    optimizers: Sequence[str],
    limits: Mapping[int, float],
    clock: str,
) -> dict[str, Any]:
    """Per optimizer, mean (and 95% CI) trials and best value while ``row[clock]`` stays
    within its seed's limit; seeds without a limit are left out."""
    result: dict[str, Any] = {}
    for o in optimizers:
        counts, bests = [], []
        for r in runs:
            if r["optimizer"] != o or int(r["seed"]) not in limits:
                continue
            limit = limits[int(r["seed"])] + 1e-9
            within = [row for row in r["rows"] if float(row[clock]) <= limit]
            counts.append(float(len(within)))
            b = [row["best_so_far"] for row in within if row["best_so_far"] is not None]
            bests.append(float(b[-1]) if b else math.nan)
        if counts:
            n, nh = _ci(counts)
            bm, bh = _ci(bests)
            result[o] = {"n_trials": {"mean": n, "ci95": nh}, "best": {"mean": bm, "ci95": bh}}
    return result


def equal_wall(
    runs: Sequence[Mapping[str, Any]], pipeline: str, optimizers: Sequence[str]
) -> dict[str, Any] | None:
    """Trials and best value of each optimizer within the same WALL time, seed by seed.

    For each seed the wall time is the shortest run of that seed (proposal time and the
    trials' overheads included: what a user waits for). ``None`` without wall times.
    """
    mine = [r for r in runs if r["pipeline"] == pipeline and r.get("wall_seconds")]
    limits: dict[int, float] = {}
    for r in mine:
        s = int(r["seed"])
        limits[s] = min(limits.get(s, math.inf), float(r["wall_seconds"]))
    if not limits:
        return None
    out: dict[str, Any] = {"wall_by_seed": {str(k): v for k, v in sorted(limits.items())}}
    out["wall"] = statistics.fmean(limits.values())
    out["optimizers"] = _within_limits(mine, optimizers, limits, "wall_elapsed")
    return out


def reach_cost(
    runs: Sequence[Mapping[str, Any]], pipeline: str, target_opt: str, direction_sign: float
) -> dict[str, Any]:
    """Per seed, the compute EEIPU needed to reach ``target_opt``'s final best (cumulative
    cost of its first trial at least as good), and that as a fraction of what
    ``target_opt`` spent. Seeds where EEIPU never reached it count in ``n_missed``."""
    mine = [r for r in runs if r["pipeline"] == pipeline]
    by = {(str(r["optimizer"]), int(r["seed"])): r for r in mine}
    costs, fracs, missed = [], [], 0
    for (o, s), e in by.items():
        if o != "eeipu" or (target_opt, s) not in by:
            continue
        b = by[(target_opt, s)]
        target = b["final_best"]
        if target is None or not math.isfinite(float(target)):
            continue
        hit = [
            float(row["cumulative_cost"])
            for row in e["rows"]
            if row["best_so_far"] is not None
            and direction_sign * float(row["best_so_far"]) >= direction_sign * float(target) - 1e-12
        ]
        if not hit:
            missed += 1
            continue
        costs.append(hit[0])
        fracs.append(hit[0] / float(b["cost_spent"]) if b["cost_spent"] else math.nan)
    return {
        "cost": _ci(costs)[0] if costs else math.nan,
        "fraction": statistics.fmean(fracs) if fracs else math.nan,
        "n_reached": len(costs),
        "n_missed": missed,
    }


def paper_metrics(runs: Sequence[Mapping[str, Any]], pipeline: str) -> dict[str, Any]:
    """EEIPU against each baseline and the GP baselines' average: % more candidates, % larger
    gain, the compute to reach the baseline's final best, and the held-out score's
    difference (where runs were evaluated on held-out seeds)."""

    def mean_of(opt: str, key: str) -> float:
        xs = [float(r[key]) for r in runs if r["pipeline"] == pipeline and r["optimizer"] == opt]
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.fmean(xs) if xs else math.nan

    def holdout_of(opt: str) -> float:
        xs = [
            float(r["holdout"]["mean"])
            for r in runs
            if r["pipeline"] == pipeline and r["optimizer"] == opt and r.get("holdout")
        ]
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.fmean(xs) if xs else math.nan

    out: dict[str, Any] = {}
    n_e, g_e = mean_of("eeipu", "n_trials"), mean_of("eeipu", "gain")
    if not math.isfinite(n_e):
        return out
    sign = _direction_sign(pipeline)
    h_e = holdout_of("eeipu")
    for b in sorted({str(r["optimizer"]) for r in runs if r["pipeline"] == pipeline}):
        if b == "eeipu":
            continue
        n_b, g_b = mean_of(b, "n_trials"), mean_of(b, "gain")
        reach = reach_cost(runs, pipeline, b, sign)
        out[b] = {
            "more_candidates_pct": 100.0 * (n_e / n_b - 1.0) if n_b else math.nan,
            "candidates_ratio": n_e / n_b if n_b else math.nan,
            "larger_gain_pct": 100.0 * (g_e / g_b - 1.0) if g_b > 0 else math.nan,
            "reach_cost": reach["cost"],
            "reach_fraction": reach["fraction"],
            "reach_seeds": f"{reach['n_reached']}/{reach['n_reached'] + reach['n_missed']}",
            "holdout_diff": h_e - holdout_of(b),
        }
    gp = [b for b in ("ei", "eipu", "carbo") if b in out]
    if gp:
        avg: dict[str, Any] = {}
        for k in (
            "more_candidates_pct",
            "candidates_ratio",
            "larger_gain_pct",
            "reach_fraction",
            "holdout_diff",
        ):
            xs = [float(out[b][k]) for b in gp if math.isfinite(float(out[b][k]))]
            avg[k] = statistics.fmean(xs) if xs else math.nan
        avg["reach_cost"], avg["reach_seeds"] = math.nan, "-"
        out["average_gp_baselines"] = avg
    return out


def _direction_sign(pipeline: str) -> float:
    from pipelines import get_pipeline

    try:
        return 1.0 if get_pipeline(pipeline).direction == "maximize" else -1.0
    except ValueError:  # hand-built runs in tests name no real pipeline
        return 1.0


@dataclass(frozen=True)
class Execution:
    """How ``run_benchmark`` runs its tasks (none of it changes the results).

    Attributes:
        jobs: worker processes (1: run in this process).
        log: called with a progress line after each run (``None``: silent).
        resume: keep the runs already in ``out_dir/runs.jsonl`` that match a task.
    """

    jobs: int = 1
    log: Any = None
    resume: bool = False


@dataclass(frozen=True)
class _Task:
    """Runs in one cache, in order: the first cold, the later ones warm (a chain)."""

    pipelines: tuple[str, ...]
    optimizer: str
    seed: int
    budgets: tuple[float, ...]
    n_warmup: int
    gp_kwargs: Mapping[str, Any] | None
    max_trials: int | None
    real: RealOptions = field(default_factory=RealOptions)

    def run_keys(self) -> list[tuple[str, str, int, str]]:
        return [
            (p, self.optimizer, self.seed, "cold" if i == 0 else "warm")
            for i, p in enumerate(self.pipelines)
        ]


def run_task(task: _Task) -> list[dict[str, Any]]:
    """The runs of one task (a warm chain shares one cache directory, removed at the end)."""
    if len(task.pipelines) == 1:
        return [
            run_one(
                task.pipelines[0],
                task.optimizer,
                task.seed,
                task.budgets[0],
                task.n_warmup,
                task.gp_kwargs,
                task.max_trials,
                task.real,
            )
        ]
    tmp = tempfile.mkdtemp(prefix="eeipu-bench-warm-")
    try:
        return [
            run_one(
                p,
                task.optimizer,
                task.seed,
                b,
                task.n_warmup,
                task.gp_kwargs,
                task.max_trials,
                task.real,
                cache_dir=tmp,
                scenario=key[3],
            )
            for p, b, key in zip(task.pipelines, task.budgets, task.run_keys(), strict=True)
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tasks(
    pipelines: Sequence[str],
    optimizers: Sequence[str],
    seeds: int,
    budgets: Mapping[str, float],
    common: tuple[int, Mapping[str, Any] | None, int | None, RealOptions],
) -> list[_Task]:
    """Seed-major: every optimizer of a seed before the next seed (load drifts fall on all
    optimizers alike). With ``warm_cache``, each optimizer's first pipeline runs as the head
    of its warm chain; the other pipelines also run cold in fresh caches."""
    n_warmup, gp_kwargs, max_trials, real = common
    out: list[_Task] = []
    for s in range(seeds):
        for i, p in enumerate(pipelines):
            for o in optimizers:
                if real.warm_cache and len(pipelines) > 1 and i == 0:
                    chain = tuple(pipelines)
                    b = tuple(budgets[q] for q in chain)
                    out.append(_Task(chain, o, s, b, n_warmup, gp_kwargs, max_trials, real))
                else:
                    out.append(
                        _Task((p,), o, s, (budgets[p],), n_warmup, gp_kwargs, max_trials, real)
                    )
    return out


def run_benchmark(
    pipelines: Sequence[str],
    optimizers: Sequence[str],
    seeds: int,
    out_dir: Path,
    budget: float | None = None,
    n_warmup: int = 10,
    gp_kwargs: Mapping[str, Any] | None = None,
    max_trials: int | None = None,
    execution: Execution = Execution(),
    real: RealOptions = RealOptions(),
) -> dict[str, Any]:
    """Run every (pipeline, optimizer, seed), write CSV / markdown / PNGs, return figures.

    ``gp_kwargs`` go to every GP optimizer (ablations: ``{"warp": "log"}``, ...). With
    ``execution.resume``, runs already in ``out_dir/runs.jsonl`` (same pipeline, optimizer,
    seed, scenario, budget and ``max_trials``) are kept and not run again.
    """
    from bench import plots

    for p in pipelines:  # bad options fail here, before any run starts
        space = bench_pipeline(p, real).space
        for o in optimizers:
            _make(o, space, "maximize", 0, n_warmup, gp_kwargs)
    if real.count_proposal_time is not None:
        from api.tuning import tune

        if "count_proposal_time" not in inspect.signature(tune).parameters:
            raise ValueError("this version of api.tuning.tune cannot count proposal time")
    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = {
        p: budget if budget is not None else default_budget(_base_pipeline(p, real))
        for p in pipelines
    }
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="eeipu-bench-shared-"))
    try:
        real, upstream_info = _prepare(pipelines, real, scratch, execution.log)
        common = (n_warmup, gp_kwargs, max_trials, real)
        tasks = _tasks(pipelines, optimizers, seeds, budgets, common)
        runs, tasks = _resumed_runs(out_dir / "runs.jsonl", tasks, execution.resume)
        _execute(tasks, runs, out_dir, execution)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write_trials_csv(out_dir / "trials.csv", runs)
    result: dict[str, Any] = {
        "budgets": budgets,
        "seeds": seeds,
        "max_trials": max_trials,
        "pipelines": {},
        "load": load_summary(runs),
        "upstream": upstream_info,
        "fix": list(real.fix),
        "retrains": real.retrains,
        "references": real.references,
    }
    lines = ["# Optimizer benchmark", ""]
    cap = f", at most {max_trials} trials per run" if max_trials is not None else ""
    cold = [r for r in runs if r.get("scenario", "cold") == "cold"]
    for p in pipelines:
        lines += [
            f"## {p} (budget {budgets[p]} s{cap}, {seeds} seeds, mean ± 95% CI)",
            "",
        ]
        per = _optimizer_table(cold, p, optimizers, lines)
        eq = equal_spend(cold, p, optimizers)
        if eq:
            _equal_spend_table(eq, lines)
        wall = equal_wall(cold, p, optimizers)
        if wall:
            _equal_wall_table(wall, lines)
        pm = paper_metrics(cold, p)
        _paper_table(pm, lines)
        figs = plots.plot_pipeline(cold, p, out_dir)
        lines += [f"![{p}: {k}]({Path(v).name})" for k, v in figs.items()] + [""]
        entry: dict[str, Any] = {
            "optimizers": per,
            "eeipu_vs": pm,
            "plot": figs["best"],
            "plots": figs,
        }
        if eq:
            entry["equal_spend"] = eq
        if wall:
            entry["equal_wall"] = wall
        warm = [r for r in runs if r.get("scenario") == "warm" and r["pipeline"] == p]
        if warm:
            lines += [f"### {p}, warm cache (after {', '.join(pipelines[: pipelines.index(p)])})"]
            lines += ["", "The study starts with the earlier studies' cached stages.", ""]
            entry["warm"] = {
                "optimizers": _optimizer_table(warm, p, optimizers, lines),
                "eeipu_vs": paper_metrics(warm, p),
            }
            _paper_table(entry["warm"]["eeipu_vs"], lines)
        result["pipelines"][p] = entry
    (out_dir / "summary.md").write_text("\n".join(lines))
    result["csv"] = str(out_dir / "trials.csv")
    result["markdown"] = str(out_dir / "summary.md")
    result["seconds"] = time.perf_counter() - t0
    return result


def _prepare(
    pipelines: Sequence[str], real: RealOptions, scratch: Path, log: Any
) -> tuple[RealOptions, dict[str, Any]]:
    """``real`` with the shared caches: the fixed upstream of every pipeline (computed once)
    and the held-out evaluations' cache."""
    import dataclasses

    upstream: dict[str, str] = {}
    info: dict[str, Any] = {}
    if real.fix:
        d = scratch / "upstream"  # one cache: pipelines that share stages share entries
        for p in pipelines:
            t = time.perf_counter()
            depth = precompute_upstream(bench_pipeline(p, real), real.run_seed, str(d))
            if depth:
                upstream[p] = str(d)
                dt = time.perf_counter() - t
                info[p] = {"fixed_stages": depth, "seconds": dt}
                if log is not None:
                    log(f"{p}: {depth} fixed stage(s) computed once in {dt:.1f}s")
    holdout = str(scratch / "holdout") if real.holdout_seeds else None
    return dataclasses.replace(real, upstream=upstream, holdout_cache=holdout), info


def load_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The machine's 1-minute load average over the runs (at their starts and ends)."""
    xs = [float(r[k][0]) for r in runs for k in ("load_start", "load_end") if r.get(k)]
    if not xs:
        return {}
    return {"min": min(xs), "mean": statistics.fmean(xs), "max": max(xs)}


def _resumed_runs(
    jsonl: Path, tasks: list[_Task], resume: bool
) -> tuple[list[dict[str, Any]], list[_Task]]:
    """The runs kept from ``jsonl`` (rewritten to hold just them) and the tasks still to run.

    A task is kept only when all its runs are there (same budget and cap)."""
    runs: list[dict[str, Any]] = []
    if not (resume and jsonl.exists()):
        jsonl.write_text("")
        return runs, tasks
    wanted: dict[tuple[str, str, int, str], tuple[float, int | None]] = {}
    for t in tasks:
        for k, b in zip(t.run_keys(), t.budgets, strict=True):
            wanted[k] = (b, t.max_trials)
    found: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        key = (r["pipeline"], r["optimizer"], int(r["seed"]), r.get("scenario", "cold"))
        if key in wanted:
            b, cap = wanted[key]
            if float(r.get("budget", b)) == b and r.get("max_trials") == cap:
                found[key] = r
    todo = []
    for t in tasks:
        if all(k in found for k in t.run_keys()):
            runs += [found[k] for k in t.run_keys()]
        else:
            todo.append(t)
    jsonl.write_text("".join(json.dumps(r, default=str) + "\n" for r in runs))
    return runs, todo


def _worker_init(threads: int) -> None:
    """A worker's torch uses its share of the cores: with each worker on every core, the
    workers' thread pools fight (measured: a 7 s trial took 35 s with two workers on 2 cores)."""
    import torch

    torch.set_num_threads(threads)


def _execute(
    tasks: Sequence[_Task], runs: list[dict[str, Any]], out_dir: Path, execution: Execution
) -> None:
    """Run ``tasks`` (appended to ``runs`` in task order). Each run is logged and
    checkpointed as soon as it finishes, so that ``--resume`` after an interruption keeps
    every finished run, not only those before the first unfinished one."""
    n_total = len(runs) + sum(len(t.pipelines) for t in tasks)
    finished: dict[int, list[dict[str, Any]]] = {}
    n_done = len(runs)

    def keep(i: int, done: list[dict[str, Any]]) -> None:
        nonlocal n_done
        finished[i] = done
        for r in done:
            n_done += 1
            _log_run(execution.log, r, n_done, n_total)
            _checkpoint(out_dir, r)

    if execution.jobs > 1:
        # spawned, not forked: the parent has run torch (the fixed upstream), and a forked
        # child's first torch operation can then wait forever on the parent's thread pool
        threads = max(1, (os.cpu_count() or 1) // execution.jobs)
        with ProcessPoolExecutor(
            execution.jobs,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        ) as ex:
            futures = {ex.submit(run_task, t): i for i, t in enumerate(tasks)}
            for f in as_completed(futures):
                keep(futures[f], f.result())
    else:
        for i, t in enumerate(tasks):
            keep(i, run_task(t))
    for i in range(len(tasks)):
        runs.extend(finished[i])


def _write_trials_csv(path: Path, runs: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in runs:
            w.writerows(r["rows"])


def _optimizer_table(
    runs: Sequence[Mapping[str, Any]], p: str, optimizers: Sequence[str], lines: list[str]
) -> dict[str, Any]:
    """Append pipeline ``p``'s per-optimizer table to ``lines``; return its figures."""
    lines += [
        "| optimizer | trials | final best | gain after warm-up | reuse % | stages from cache % "
        "| overshoot s | median ask s | wall s | held-out score | capped runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per: dict[str, Any] = {}
    for o in optimizers:
        rs = [r for r in runs if r["pipeline"] == p and r["optimizer"] == o]
        if not rs:
            continue
        stats_ = {
            k: _ci([float(r.get(k, math.nan)) for r in rs])
            for k in (
                "n_trials",
                "final_best",
                "gain",
                "reuse_fraction",
                "cache_share",
                "overshoot",
                "wall_seconds",
            )
        }
        stats_["holdout"] = _ci([float(r["holdout"]["mean"]) for r in rs if r.get("holdout")])
        asks = [float(r["ask_median"]) for r in rs if math.isfinite(float(r["ask_median"]))]
        ask = statistics.median(asks) if asks else math.nan
        per[o] = {k: {"mean": v[0], "ci95": v[1]} for k, v in stats_.items()}
        per[o]["ask_median_seconds"] = ask
        n_capped = sum(bool(r.get("capped")) for r in rs)
        per[o]["capped_runs"] = n_capped
        share = stats_["cache_share"][0]
        lines.append(
            f"| {o} | {_fmt(*stats_['n_trials'])} | {_fmt(*stats_['final_best'])} | "
            f"{_fmt(*stats_['gain'])} | {100 * stats_['reuse_fraction'][0]:.0f} | "
            f"{'-' if not math.isfinite(share) else f'{100 * share:.0f}'} | "
            f"{stats_['overshoot'][0]:.3g} | {ask:.3f} | {_fmt(*stats_['wall_seconds'], 3)} | "
            f"{_fmt(*stats_['holdout'], 3)} | {n_capped}/{len(rs)} |"
        )
    return per


def _equal_spend_table(eq: Mapping[str, Any], lines: list[str]) -> None:
    lines += [
        "",
        "Capped runs end before the budget, so counts are also compared at EQUAL "
        "SPEND: for each seed, the least any capped run of that seed spent (mean "
        f"{eq['spend']:.6g} s); trials whose cumulative cost stays within it. Cooling "
        "was scheduled for the full budget.",
        "",
        "| optimizer | trials within spend | best within spend |",
        "|---|---|---|",
    ]
    for o, v in eq["optimizers"].items():
        lines.append(
            f"| {o} | {_fmt(v['n_trials']['mean'], v['n_trials']['ci95'])} | "
            f"{_fmt(v['best']['mean'], v['best']['ci95'])} |"
        )


def _paper_table(pm: Mapping[str, Mapping[str, Any]], lines: list[str]) -> None:
    lines += ["", "EEIPU against each baseline (the paper's two metrics, then the compute EEIPU"]
    lines += ["needed to reach the baseline's final best, and the held-out score's difference):"]
    lines += ["", "| baseline | % more candidates | candidates ratio | % larger gain "]
    lines[-1] += "| compute to reach its best s | as share of its spend | seeds reached "
    lines[-1] += "| held-out score diff |"
    lines += ["|---|---|---|---|---|---|---|---|"]
    for b, m in pm.items():
        lines.append(
            f"| {b} | {m['more_candidates_pct']:.1f} | {m['candidates_ratio']:.2f} | "
            f"{m['larger_gain_pct']:.1f} | {_fmt(m.get('reach_cost', math.nan), math.nan, 3)} | "
            f"{_fmt(m.get('reach_fraction', math.nan), math.nan, 2)} | "
            f"{m.get('reach_seeds', '-')} | {_fmt(m.get('holdout_diff', math.nan), math.nan, 3)} |"
        )
    lines.append("")


def _equal_wall_table(eq: Mapping[str, Any], lines: list[str]) -> None:
    lines += [
        "",
        "At EQUAL WALL TIME (what a user waits for: proposal time and overheads included): "
        f"for each seed, its shortest run (mean {eq['wall']:.4g} s); trials finished within it.",
        "",
        "| optimizer | trials within wall time | best within wall time |",
        "|---|---|---|",
    ]
    for o, v in eq["optimizers"].items():
        lines.append(
            f"| {o} | {_fmt(v['n_trials']['mean'], v['n_trials']['ci95'])} | "
            f"{_fmt(v['best']['mean'], v['best']['ci95'])} |"
        )


def _checkpoint(out_dir: Path, run: Mapping[str, Any]) -> None:
    """Append a finished run to ``runs.jsonl`` (partial results survive an interruption)."""
    with open(out_dir / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(run, default=str) + "\n")


def _log_run(log: Any, r: Mapping[str, Any], i: int, n: int) -> None:
    if log is None:
        return
    load = r.get("load_start") or [math.nan]
    log(
        f"[{i}/{n}] {r['pipeline']} {r['optimizer']} seed={r['seed']} "
        f"{r.get('scenario', 'cold')}: {r['n_trials']} trials, best {r['final_best']:.4g}, "
        f"reuse {100 * r['reuse_fraction']:.0f}%, ask {r['ask_median']:.3f}s, "
        f"wall {r.get('wall_seconds', math.nan):.1f}s, load {float(load[0]):.2f}"
    )


# ------------------------------------------------------------------------------ report
REPORT_SECTION = "Real pipelines"


def shortfalls(result: Mapping[str, Any]) -> list[str]:
    """Plain statements of where EEIPU does not win, from a benchmark's figures."""
    out: list[str] = []
    for p, entry in result["pipelines"].items():
        per = entry["optimizers"]
        if "eeipu" not in per:
            continue
        sign = _direction_sign(p)
        e_best = float(per["eeipu"]["final_best"]["mean"])
        for b, v in per.items():
            bb = float(v["final_best"]["mean"])
            if b != "eeipu" and math.isfinite(bb) and sign * bb > sign * e_best:
                out.append(
                    f"{p}: {b} ends with a better mean best ({bb:.4g} vs EEIPU {e_best:.4g})."
                )
        vs = entry["eeipu_vs"]
        ei = vs.get("ei")
        if ei:
            r = float(ei["candidates_ratio"])
            if math.isfinite(r) and r < 2.0:
                out.append(f"{p}: EEIPU evaluates {r:.2f}x EI's candidates, short of 2x.")
            f = float(ei["reach_fraction"])
            if ei["reach_seeds"].split("/")[0] != ei["reach_seeds"].split("/")[1]:
                out.append(
                    f"{p}: EEIPU does not reach EI's final best on every seed "
                    f"({ei['reach_seeds']} reached)."
                )
            if math.isfinite(f) and f > 0.5:
                out.append(
                    f"{p}: EEIPU needs {f:.0%} of EI's compute to reach EI's final best "
                    "(target: at most half)."
                )
        for b, v in vs.items():
            d = float(v.get("holdout_diff", math.nan))
            if b != "average_gp_baselines" and math.isfinite(d) and d < 0:
                out.append(
                    f"{p}: on held-out seeds {b}'s best configuration scores higher "
                    f"(EEIPU {d:+.3g})."
                )
        wall = entry.get("equal_wall")
        if wall and "eeipu" in wall["optimizers"]:
            ew = float(wall["optimizers"]["eeipu"]["best"]["mean"])
            for b in ("tpe", "optuna-gp"):
                if b in wall["optimizers"]:
                    bw = float(wall["optimizers"][b]["best"]["mean"])
                    if math.isfinite(bw) and (not math.isfinite(ew) or sign * bw > sign * ew):
                        out.append(
                            f"{p}: at equal wall time {b} is ahead ({bw:.4g} vs EEIPU {ew:.4g})."
                        )
    return out


def _machine() -> str:
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"


def write_report(result: Mapping[str, Any], path: Path, command: str) -> None:
    """Write the benchmark's markdown as the section ``## Real pipelines`` of ``path``
    (replacing that section if there is one), with its plots copied to ``path``'s folder
    under ``img/``: the command, the machine, the date and load, the tables and the plain
    statement of where EEIPU does not win."""
    import datetime

    md = Path(result["markdown"]).read_text().splitlines()
    img = path.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    body: list[str] = []
    for line in md[1:]:  # the title goes
        if line.startswith("#"):
            line = "#" + line
        if line.startswith("!["):
            name = line[line.index("(") + 1 : -1]
            src = Path(result["markdown"]).parent / name
            dst = img / f"real-{name}"
            shutil.copyfile(src, dst)
            line = line[: line.index("(") + 1] + f"img/{dst.name})"
        body.append(line)
    load = result.get("load") or {}
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_s = (
        f"load average {load['min']:.2f}-{load['max']:.2f} (mean {load['mean']:.2f}) over the runs"
        if load
        else "load not recorded"
    )
    head = [
        f"## {REPORT_SECTION}",
        "",
        f"`{command}` ({when}; {_machine()}; {load_s}; {result['seconds']:.0f} s wall for the "
        "whole benchmark). Costs: the stages' measured (or declared) seconds; every run in a "
        "fresh cache; the optimizers of one seed run one after another. Written by the "
        "command (`--report`).",
        "",
    ]
    if result.get("upstream"):
        ups = ", ".join(
            f"{p}: {v['fixed_stages']} stages, {v['seconds']:.0f} s"
            for p, v in result["upstream"].items()
        )
        head += [
            f"Fixed ({' '.join('--fix ' + f for f in result.get('fix', []))}): the leading stages "
            f"fixed whole were computed once ({ups}; a pipeline sharing them with an earlier "
            "one reuses them) and are in no run's budget: every run tunes the stages after "
            "them, fed their output.",
            "",
        ]
    if result.get("retrains") is not None or result.get("references") is not None:
        from pipelines.unlearning.pipelines import DEFAULT_REFERENCES, DEFAULT_RETRAINS

        e, k = result.get("retrains"), result.get("references")
        head += [
            "Train stage: the original model, the retrained ensemble of "
            f"{DEFAULT_RETRAINS if e is None else e} and {DEFAULT_REFERENCES if k is None else k} "
            f"LiRA reference models per train run (the pipelines' defaults: {DEFAULT_RETRAINS} "
            f"and {DEFAULT_REFERENCES}), so that the benchmark "
            "fits its hour; the pass bands and LiRA scores are coarser for it.",
            "",
        ]
    misses = shortfalls(result)
    tail = ["", "Where EEIPU does not win:", ""]
    tail += [f"- {m}" for m in misses] or ["- nowhere in these runs."]
    section = "\n".join([*head, *body, *tail]).rstrip() + "\n"
    text = path.read_text() if path.exists() else ""
    start = text.find(f"\n## {REPORT_SECTION}\n")
    if text.startswith(f"## {REPORT_SECTION}\n"):
        start = 0
    if start < 0:
        text = text.rstrip() + "\n\n" + section if text else section
    else:
        s0 = start + (1 if text[start] == "\n" else 0)
        nxt = text.find("\n## ", s0 + 3)
        rest = "" if nxt < 0 else text[nxt + 1 :]
        text = text[:s0] + section + ("\n" + rest if rest else "")
    path.write_text(text)
