"""``eeipu tune PIPELINE``: a local tuning run under a cost budget, with a progress bar."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from typing import TYPE_CHECKING, Any

from api.cli.common import add_cache_arg, emit_json, open_cache_from

if TYPE_CHECKING:
    from api.tuning import TuneResult

OPTIMIZERS = ("eeipu", "ei", "eipu", "carbo", "random")


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="tune a pipeline's hyperparameters under a cost budget")
    p.add_argument("pipeline", help="built-in name or package.module:attribute")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="eeipu")
    p.add_argument("--budget", type=float, required=True, help="cost budget in seconds")
    p.add_argument("--max-trials", type=int, default=None, help="stop after N trials")
    p.add_argument("--objective", default=None, help="metric to optimise (default: pipeline's)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None)
    p.add_argument("--seed", type=int, default=0, help="optimizer seed")
    p.add_argument("--run-seed", type=int, default=None, help="pipeline run seed (cache key)")
    p.add_argument(
        "--budget-margin",
        type=float,
        default=0.0,
        help="allowed overshoot in seconds: a trial predicted to exceed the remaining "
        "budget by more is not started",
    )
    p.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=5,
        help="the study fails after this many failed trials in a row (1..1000)",
    )
    p.add_argument("--n-warmup", type=int, default=10, help="random trials before the models")
    p.add_argument(
        "--db",
        nargs="?",
        const="",
        default=None,
        help="run the study in the trial store at this URL (bare --db: the embedded SQLite "
        "file) instead of in memory; servers and `eeipu studies` see it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    add_cache_arg(p)
    p.set_defaults(func=run)


class Terminated(BaseException):
    """SIGTERM arrived: stop the study resumably, like Ctrl-C (a ``BaseException``, so no
    ``except Exception`` of a stage or of the trial runner records it as a failed trial)."""


def _on_sigterm(*_: Any) -> None:
    raise Terminated()


def run(args: argparse.Namespace) -> int:
    from api.service import StudyRequest
    from api.store import open_store
    from api.tuning import MEMORY_STORE, StudyFailed, StudyRun
    from pipelines import get_pipeline

    _check_args(args)
    pipe = get_pipeline(args.pipeline)
    objective = args.objective or pipe.objective
    pipe.check_objective(objective)  # before any work: ValueError, exit 2
    cache = open_cache_from(args)
    url = MEMORY_STORE
    if args.db is not None:
        from api.config import default_db

        url = args.db = args.db or default_db()
    req = StudyRequest(
        pipeline=args.pipeline,
        optimizer=args.optimizer,
        budget_seconds=args.budget if math.isfinite(args.budget) else 1e9,
        max_trials=args.max_trials,
        objective=objective,
        direction=args.direction,
        seed=args.seed,
        parallelism=1,
        name="eeipu tune",
        run_seed=args.run_seed,
        budget_margin=args.budget_margin,
        max_consecutive_failures=args.max_consecutive_failures,
        optimizer_options={"n_warmup": args.n_warmup},
    )
    bar, sinks = _progress_bar(args)
    store = open_store(url, pool_size=2)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    rc = 0
    try:
        study = None
        try:
            study = StudyRun(store, pipe, req, cache, sinks=sinks, budget=args.budget)
            res: TuneResult = study.run()
        except StudyFailed as e:
            res, rc = e.result, 1
            sys.stderr.write(f"eeipu: study failed: {e}\n")
        except (KeyboardInterrupt, Terminated) as e:
            if study is None:
                raise
            term = isinstance(e, Terminated)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            res = study.interrupt("interrupted by " + ("SIGTERM" if term else "SIGINT"))
            rc = 143 if term else 130
            sys.stderr.write(f"eeipu: interrupted; study {study.study_id} is stopped (resumable)\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
        store.close()
    _report(args, res)
    return rc


def _check_args(args: argparse.Namespace) -> None:
    """The option checks of ``eeipu tune`` (``ValueError``, exit 2), before any work."""
    if not (args.budget > 0):
        raise ValueError(f"--budget must be positive, got {args.budget}")
    if args.max_trials is not None and args.max_trials < 1:
        raise ValueError(f"--max-trials must be >= 1, got {args.max_trials}")
    if args.budget_margin < 0:
        raise ValueError(f"--budget-margin must be >= 0, got {args.budget_margin}")
    if args.n_warmup < 1:
        raise ValueError(f"--n-warmup must be >= 1, got {args.n_warmup}")
    if not 1 <= args.max_consecutive_failures <= 1000:
        raise ValueError("--max-consecutive-failures must be between 1 and 1000")
    if not math.isfinite(args.budget) and args.max_trials is None:
        raise ValueError("an unlimited --budget needs --max-trials")


def _progress_bar(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The tqdm bar (``None`` with ``--no-progress``) and the trial sinks that advance it."""
    from api.tuning import TrialSummary

    sinks: list[Any] = []
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        total = args.budget if math.isfinite(args.budget) else None
        bar = tqdm(
            total=total,
            desc=args.optimizer,
            file=sys.stderr,
            leave=False,
            bar_format=(
                "{l_bar}{bar}| {n:.1f}/{total:.1f}s cost [{elapsed}{postfix}]"
                if total is not None
                else "{desc}: {n:.1f}s cost [{elapsed}{postfix}]"
            ),
        )

        def progress(t: TrialSummary) -> None:
            assert bar is not None
            step = t.cost_paid
            if bar.total is not None:  # an overshooting last trial fills the bar, no more:
                step = min(step, max(0.0, bar.total - bar.n))  # tqdm drops a passed total
            bar.update(step)
            best = "-" if t.best_value is None else f"{t.best_value:.4g}"
            bar.set_postfix(trials=t.number + 1, best=best, reused=t.reused_depth)

        sinks.append(progress)
    return bar, sinks


def _report(args: argparse.Namespace, res: TuneResult) -> None:
    """Print the study's summary (JSON with ``--json``)."""
    out = res.summary()
    if args.db is not None:
        out["db"] = {"url": args.db, "study_id": res.study_id, "state": res.state}
    if args.json:
        emit_json(out)
        return
    print(
        f"{out['optimizer']} on {out['pipeline']}: {out['n_trials']} trials "
        f"({out['n_trials_reusing_cache']} reused a cached prefix), "
        f"cost {out['cost_spent']:.3f}s of {res.budget:.3f}s "
        f"(overshoot {out['overshoot']:.3f}s), stopped: {out['stop_reason']}"
    )
    print(f"best {out['objective']} = {out['best_value']} (trial {out['best_trial']})")
    for stage, params in (out["best_params"] or {}).items():
        print(f"  {stage}: {params}")
    _print_metrics(out.get("best_metrics") or {})


REFERENCES = ("retrained", "original")


def _print_metrics(metrics: dict[str, float]) -> None:
    """The best trial's metrics; where the pipeline also reports reference models' values
    (``retrained_<m>``, ``original_<m>``, as the unlearning pipelines do), side by side."""
    if not metrics:
        return
    refs = [r for r in REFERENCES if any(k.startswith(f"{r}_") for k in metrics)]
    prefixes = (*(f"{r}_" for r in refs), "gap_", "info_")
    base = sorted(k for k in metrics if not k.startswith(prefixes))
    paired = [k for k in base if any(f"{r}_{k}" in metrics for r in refs)]
    if not paired:
        print("metrics of the best trial:")
        for k in base:
            print(f"  {k:<28} {metrics[k]:.4g}")
        return
    print(f"metrics of the best trial next to the {' and '.join(refs)} model's:")
    print(f"  {'metric':<28} {'best trial':>11}" + "".join(f" {r:>11}" for r in refs))
    for k in paired:
        cols = "".join(
            f" {metrics[f'{r}_{k}']:>11.4f}" if f"{r}_{k}" in metrics else f" {'':>11}"
            for r in refs
        )
        print(f"  {k:<28} {metrics[k]:>11.4f}{cols}")
    for k in base:
        if k not in paired:
            print(f"  {k:<28} {metrics[k]:>11.4g}")
