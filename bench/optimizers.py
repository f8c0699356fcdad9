"""The optimizer benchmark: every optimizer at equal cost budgets, over seeds and pipelines.

Each (pipeline, optimizer, seed) run is a fresh ``api.tuning.tune`` with its own empty cache
directory, so reuse comes only from what that run computed. Results: a CSV of every trial, a
markdown table (means and 95% t-intervals over seeds), a PNG per pipeline of best-so-far
against cumulative cost, and the paper's two metrics of EEIPU against each baseline:

* % more candidates evaluated within the budget: ``mean n_trials(EEIPU) / mean n_trials(B) - 1``;
* % larger improvement of the objective from the end of warm-up:
  ``mean gain(EEIPU) / mean gain(B) - 1``, where ``gain`` is the best value at the end of the
  run minus the best value after the warm-up trials (sign-adjusted when minimising).

Optuna's TPE runs as an outside reference when optuna is installed. Every finished run is
also appended to ``runs.jsonl`` as it finishes, so an interrupted benchmark keeps its runs.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.optuna_adapter import OptunaTPE
from eeipu.base import Optimizer
from eeipu.space import SearchSpace

__all__ = ["Execution", "OptunaTPE", "default_budget", "run_benchmark", "run_one"]

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
]


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
    from eeipu.registry import make_optimizer

    kw = dict(gp_kwargs or {}) if name in GP_OPTIMIZERS else {}
    return make_optimizer(name, space, direction=direction, seed=seed, n_warmup=n_warmup, **kw)


def default_budget(pipeline: Any, n_full_runs: float = 50.0, seed: int = 0) -> float:
    """``n_full_runs`` times the mean cost of a full run of random configurations."""
    rng = random.Random(seed)
    costs = [pipeline.run(pipeline.space.sample(rng)).total_cost_seconds for _ in range(20)]
    return round(float(n_full_runs * statistics.mean(costs)), 1)


def run_one(
    pipeline_name: str,
    optimizer: str,
    seed: int,
    budget: float,
    n_warmup: int = 10,
    gp_kwargs: Mapping[str, Any] | None = None,
    max_trials: int | None = None,
) -> dict[str, Any]:
    """One tuning run in a fresh cache; returns its per-trial rows and summary.

    ``max_trials`` caps the run (every optimizer alike): where cheap reused prefixes allow
    thousands of trials, the cap keeps the GP's cubic cost bounded; a capped run reports
    ``capped`` and spends less than the budget.
    """
    from api.tuning import tune
    from cache import open_cache
    from pipelines import get_pipeline

    pipe = get_pipeline(pipeline_name)
    tmp = tempfile.mkdtemp(prefix="eeipu-bench-opt-")
    try:
        opt = _make(optimizer, pipe.space, pipe.direction, seed, n_warmup, gp_kwargs)
        res = tune(pipe, opt, budget, cache=open_cache(tmp), max_trials=max_trials)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
        }
        for t in res.trials
    ]
    out = summarise_run(rows, pipe.direction, budget, n_warmup)
    out["max_trials"] = max_trials
    out["capped"] = max_trials is not None and len(rows) >= max_trials
    return out


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
        "optimizers": {},
    }
    for o in optimizers:
        counts, bests = [], []
        for r in mine:
            if r["optimizer"] != o or int(r["seed"]) not in spends:
                continue
            limit = spends[int(r["seed"])]
            within = [row for row in r["rows"] if float(row["cumulative_cost"]) <= limit]
            counts.append(float(len(within)))
            b = [row["best_so_far"] for row in within if row["best_so_far"] is not None]
            bests.append(float(b[-1]) if b else math.nan)
        if counts:
            n, nh = _ci(counts)
            bm, bh = _ci(bests)
            out["optimizers"][o] = {
                "n_trials": {"mean": n, "ci95": nh},
                "best": {"mean": bm, "ci95": bh},
            }
    return out


def paper_metrics(runs: Sequence[Mapping[str, Any]], pipeline: str) -> dict[str, Any]:
    """% more candidates and % larger gain of EEIPU against each baseline and their average."""

    def mean_of(opt: str, key: str) -> float:
        xs = [float(r[key]) for r in runs if r["pipeline"] == pipeline and r["optimizer"] == opt]
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.fmean(xs) if xs else math.nan

    out: dict[str, Any] = {}
    n_e, g_e = mean_of("eeipu", "n_trials"), mean_of("eeipu", "gain")
    if not math.isfinite(n_e):
        return out
    for b in sorted({str(r["optimizer"]) for r in runs if r["pipeline"] == pipeline}):
        if b == "eeipu":
            continue
        n_b, g_b = mean_of(b, "n_trials"), mean_of(b, "gain")
        out[b] = {
            "more_candidates_pct": 100.0 * (n_e / n_b - 1.0) if n_b else math.nan,
            "candidates_ratio": n_e / n_b if n_b else math.nan,
            "larger_gain_pct": 100.0 * (g_e / g_b - 1.0) if g_b > 0 else math.nan,
        }
    gp = [b for b in ("ei", "eipu", "carbo") if b in out]
    if gp:
        out["average_gp_baselines"] = {
            k: statistics.fmean(out[b][k] for b in gp)
            for k in ("more_candidates_pct", "candidates_ratio", "larger_gain_pct")
        }
    return out


def _plot(runs: Sequence[Mapping[str, Any]], pipeline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    mine = [r for r in runs if r["pipeline"] == pipeline]
    budget = max((r["cost_spent"] for r in mine), default=1.0)
    grid = np.linspace(0, budget, 200)
    for opt in sorted({r["optimizer"] for r in mine}):
        curves = []
        for r in (r for r in mine if r["optimizer"] == opt):
            c = np.array([row["cumulative_cost"] for row in r["rows"]], dtype=float)
            b = np.array(
                [np.nan if row["best_so_far"] is None else row["best_so_far"] for row in r["rows"]],
                dtype=float,
            )
            idx = np.searchsorted(c, grid, side="right") - 1
            curves.append(np.where(idx >= 0, b[np.clip(idx, 0, None)], np.nan))
        arr = np.array(curves)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            mean = np.nanmean(arr, axis=0)
            lo, hi = np.nanpercentile(arr, 25, axis=0), np.nanpercentile(arr, 75, axis=0)
        (line,) = ax.plot(grid, mean, label=opt, lw=2 if opt == "eeipu" else 1.2)
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.12)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("cumulative cost (s)")
    ax.set_ylabel("best objective so far (mean; band: quartiles)")
    ax.set_title(pipeline)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


_Task = tuple[str, str, int, float, int, Mapping[str, Any] | None, int | None]


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
) -> dict[str, Any]:
    """Run every (pipeline, optimizer, seed), write CSV / markdown / PNGs, return figures.

    ``gp_kwargs`` go to every GP optimizer (ablations: ``{"warp": "log"}``, ...). With
    ``execution.resume``, runs already in ``out_dir/runs.jsonl`` (same pipeline, optimizer,
    seed, budget and ``max_trials``) are kept and not run again.
    """
    from pipelines import get_pipeline

    for p in pipelines:  # bad options fail here, before any run starts
        space = get_pipeline(p).space
        for o in optimizers:
            _make(o, space, "maximize", 0, n_warmup, gp_kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = {
        p: budget if budget is not None else default_budget(get_pipeline(p)) for p in pipelines
    }
    tasks: list[_Task] = [
        (p, o, s, budgets[p], n_warmup, gp_kwargs, max_trials)
        for p in pipelines
        for s in range(seeds)
        for o in optimizers
    ]
    t0 = time.perf_counter()
    runs, tasks = _resumed_runs(out_dir / "runs.jsonl", tasks, execution.resume, max_trials)
    _execute(tasks, runs, out_dir, execution)
    _write_trials_csv(out_dir / "trials.csv", runs)
    result: dict[str, Any] = {
        "budgets": budgets,
        "seeds": seeds,
        "max_trials": max_trials,
        "pipelines": {},
    }
    lines = ["# Optimizer benchmark", ""]
    cap = f", at most {max_trials} trials per run" if max_trials is not None else ""
    for p in pipelines:
        lines += [
            f"## {p} (budget {budgets[p]} s{cap}, {seeds} seeds, mean ± 95% CI)",
            "",
        ]
        per = _optimizer_table(runs, p, optimizers, lines)
        eq = equal_spend(runs, p, optimizers)
        if eq:
            _equal_spend_table(eq, lines)
        pm = paper_metrics(runs, p)
        _paper_table(pm, lines)
        png = out_dir / f"{p}.png"
        _plot(runs, p, png)
        lines += [f"![{p}]({png.name})", ""]
        result["pipelines"][p] = {"optimizers": per, "eeipu_vs": pm, "plot": str(png)}
        if eq:
            result["pipelines"][p]["equal_spend"] = eq
    (out_dir / "summary.md").write_text("\n".join(lines))
    result["csv"] = str(out_dir / "trials.csv")
    result["markdown"] = str(out_dir / "summary.md")
    result["seconds"] = time.perf_counter() - t0
    return result


def _resumed_runs(
    jsonl: Path, tasks: list[_Task], resume: bool, max_trials: int | None
) -> tuple[list[dict[str, Any]], list[_Task]]:
    """The runs kept from ``jsonl`` (rewritten to hold just them) and the tasks still to run."""
    runs: list[dict[str, Any]] = []
    if not (resume and jsonl.exists()):
        jsonl.write_text("")
        return runs, tasks
    wanted = {(t[0], t[1], t[2]): t[3] for t in tasks}
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        key = (r["pipeline"], r["optimizer"], int(r["seed"]))
        same_cap = r.get("max_trials") == max_trials
        if key in wanted and float(r.get("budget", wanted[key])) == wanted[key] and same_cap:
            runs.append(r)
    done = {(r["pipeline"], r["optimizer"], int(r["seed"])) for r in runs}
    tasks = [t for t in tasks if (t[0], t[1], t[2]) not in done]
    jsonl.write_text("".join(json.dumps(r, default=str) + "\n" for r in runs))
    return runs, tasks


def _execute(
    tasks: Sequence[_Task], runs: list[dict[str, Any]], out_dir: Path, execution: Execution
) -> None:
    """Run ``tasks`` (appended to ``runs`` in task order, each logged and checkpointed)."""
    n_total = len(runs) + len(tasks)
    if execution.jobs > 1:
        with ProcessPoolExecutor(execution.jobs) as ex:
            futs = [ex.submit(run_one, *t) for t in tasks]
            for f in futs:
                runs.append(f.result())
                _log_run(execution.log, runs[-1], len(runs), n_total)
                _checkpoint(out_dir, runs[-1])
    else:
        for t in tasks:
            runs.append(run_one(*t))
            _log_run(execution.log, runs[-1], len(runs), n_total)
            _checkpoint(out_dir, runs[-1])


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
        "| optimizer | trials | final best | gain after warm-up | reuse % | overshoot s "
        "| median ask s | capped runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per: dict[str, Any] = {}
    for o in optimizers:
        rs = [r for r in runs if r["pipeline"] == p and r["optimizer"] == o]
        if not rs:
            continue
        stats_ = {
            k: _ci([float(r[k]) for r in rs])
            for k in ("n_trials", "final_best", "gain", "reuse_fraction", "overshoot")
        }
        asks = [float(r["ask_median"]) for r in rs if math.isfinite(float(r["ask_median"]))]
        ask = statistics.median(asks) if asks else math.nan
        per[o] = {k: {"mean": v[0], "ci95": v[1]} for k, v in stats_.items()}
        per[o]["ask_median_seconds"] = ask
        n_capped = sum(bool(r.get("capped")) for r in rs)
        per[o]["capped_runs"] = n_capped
        lines.append(
            f"| {o} | {_fmt(*stats_['n_trials'])} | {_fmt(*stats_['final_best'])} | "
            f"{_fmt(*stats_['gain'])} | {100 * stats_['reuse_fraction'][0]:.0f} | "
            f"{stats_['overshoot'][0]:.3g} | {ask:.3f} | {n_capped}/{len(rs)} |"
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


def _paper_table(pm: Mapping[str, Mapping[str, float]], lines: list[str]) -> None:
    lines += ["", "EEIPU against each baseline (the paper's two metrics):", ""]
    lines += ["| baseline | % more candidates | candidates ratio | % larger gain |"]
    lines += ["|---|---|---|---|"]
    for b, m in pm.items():
        lines.append(
            f"| {b} | {m['more_candidates_pct']:.1f} | {m['candidates_ratio']:.2f} | "
            f"{m['larger_gain_pct']:.1f} |"
        )
    lines.append("")


def _checkpoint(out_dir: Path, run: Mapping[str, Any]) -> None:
    """Append a finished run to ``runs.jsonl`` (partial results survive an interruption)."""
    with open(out_dir / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(run, default=str) + "\n")


def _log_run(log: Any, r: Mapping[str, Any], i: int, n: int) -> None:
    if log is None:
        return
    log(
        f"[{i}/{n}] {r['pipeline']} {r['optimizer']} seed={r['seed']}: "
        f"{r['n_trials']} trials, best {r['final_best']:.4g}, "
        f"reuse {100 * r['reuse_fraction']:.0f}%, ask {r['ask_median']:.3f}s"
    )
