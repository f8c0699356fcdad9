"""``eeipu bench <what>``: benchmark commands that print their figures (``--json``: one line).

The ``eeipu`` CLI loads ``register`` through the entry-point group ``eeipu.cli`` (see
pyproject), so the product never imports the benchmarks. ``cache``, ``optimizers`` and
``unlearning`` parse their flags here and import their (heavier) modules only when run;
``suggest`` and ``api`` carry their own ``register``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import Any

from api.cli.common import emit_json


def register(sub: Any) -> None:
    """Add ``bench`` and its sub-commands to the ``eeipu`` sub-parsers ``sub``."""
    from bench import api_load, dashboard, suggest, workers

    p = sub.add_parser("bench", help="benchmarks (print their figures; --json for one line)")
    bsub = p.add_subparsers(dest="bench", required=True, parser_class=type(p))
    _register_cache(bsub)
    _register_optimizers(bsub)
    suggest.register(bsub)
    _register_unlearning(bsub)
    api_load.register(bsub)
    dashboard.register(bsub)
    workers.register(bsub)


# ------------------------------------------------------------------------------ cache
def _register_cache(sub: Any) -> None:
    p = sub.add_parser("cache", help="hit time vs numpy.load for a large float32 output")
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--location", default=None, help="cache directory or fsspec URL to test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    """``eeipu bench cache``."""
    from bench.cache import bench_cache

    if args.size_mb <= 0 or args.repeats <= 0:
        raise ValueError("--size-mb and --repeats must be positive")
    res = bench_cache(args.size_mb, args.repeats, args.location)
    if args.json:
        emit_json(res)
    else:
        for k, v in res.items():
            print(f"{k:>28}: {v}")
    return 0


# ------------------------------------------------------------------------------ optimizers
DEFAULT_OPTIMIZERS = ("eeipu", "ei", "eipu", "carbo", "random")


def _register_optimizers(sub: Any) -> None:
    p = sub.add_parser(
        "optimizers",
        help="EEIPU vs EI, EIPU, CArBO, random (and Optuna's TPE and GP sampler) at equal "
        "cost budgets",
    )
    p.add_argument(
        "--pipeline",
        action="append",
        default=None,
        help="pipeline to benchmark (repeat; default synthetic-3stage and synthetic-10stage)",
    )
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", required=True, help="directory for the CSV, markdown and PNGs")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="cost budget per run in seconds (default: 50 mean full runs of the pipeline)",
    )
    p.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        help="comma-separated optimizers (tpe and optuna-gp are added when optuna is "
        "installed; tpe-memo: TPE with a memoization layer)",
    )
    p.add_argument(
        "--no-tpe",
        action="store_true",
        help="skip the Optuna references (TPE and the GP sampler) unless --optimizers names them",
    )
    p.add_argument("--n-warmup", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    p.add_argument(
        "--max-trials",
        type=int,
        default=600,
        help="cap every run at this many trials (default 600; 0: no cap). With the paper's "
        "costs, deep cached prefixes make trials so cheap that an uncapped run can reach "
        "thousands of trials; capped runs are reported, and counts compared at equal spend",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in OUT/runs.jsonl (same budget and cap); run the others",
    )
    p.add_argument(
        "--gp-options",
        default=None,
        help="JSON keyword arguments for every GP optimizer (ablations), "
        'e.g. {"objective_noise": 1e-4}',
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="also run the warm-cache scenario, reported apart: per optimizer and seed, the "
        "pipelines are tuned one after another in one shared cache",
    )
    p.add_argument(
        "--run-seed",
        type=int,
        default=None,
        help="pipeline run seed of the tuning (default: 1000 with --holdout-seeds, else the "
        "pipeline's default)",
    )
    p.add_argument(
        "--holdout-seeds",
        type=int,
        default=0,
        help="evaluate every run's best configuration on the first N run seeds (0, 1, ...; "
        "held out from tuning), reporting --holdout-metric",
    )
    p.add_argument(
        "--holdout-metric",
        default="retrain_score",
        help="metric of the held-out evaluation (default: the unlearning pipelines' retrain_score)",
    )
    p.add_argument(
        "--count-proposal-time",
        action="store_true",
        help="the budget also pays the optimizers' proposal time (equal wall time)",
    )
    p.add_argument(
        "--fix",
        action="append",
        default=None,
        metavar="STAGE[.PARAM=VALUE]",
        help="keep parameters out of every optimizer's search (repeat; as in `eeipu tune`). "
        "Leading stages fixed whole are computed once per pipeline and every run's fresh "
        "cache starts with them",
    )
    p.add_argument(
        "--retrains",
        type=int,
        default=None,
        metavar="N",
        help="unlearning pipelines: retrained models of the pass bands (>= 2; default 8); "
        "with --references, what one train stage run costs",
    )
    p.add_argument(
        "--references",
        type=int,
        default=None,
        metavar="N",
        help="unlearning pipelines: LiRA reference models (>= 2; default 32)",
    )
    p.add_argument(
        "--report",
        default=None,
        help="also write the results as the section 'Real pipelines' of this markdown file "
        "(e.g. docs/benchmarks.md; plots copied to its img/ folder)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_optimizers)


def run_optimizers(args: argparse.Namespace) -> int:
    """``eeipu bench optimizers``."""
    from bench.optimizers import (
        BENCH_OPTIMIZERS,
        OUTSIDE,
        Execution,
        RealOptions,
        run_benchmark,
        write_report,
    )
    from eeipu.registry import optimizer_names

    pipelines = args.pipeline or ["synthetic-3stage", "synthetic-10stage"]
    opts = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    known = set(optimizer_names()) | set(BENCH_OPTIMIZERS)
    bad = [o for o in opts if o not in known]
    if bad or not opts:
        raise ValueError(f"unknown optimizer(s) {bad}; choose from {sorted(known)}")
    if args.seeds < 1 or args.jobs < 1 or args.n_warmup < 1:
        raise ValueError("--seeds, --jobs and --n-warmup must be >= 1")
    if args.max_trials < 0:
        raise ValueError("--max-trials must be >= 0 (0: no cap)")
    if args.budget is not None and not args.budget > 0:
        raise ValueError("--budget must be positive")
    if args.holdout_seeds < 0:
        raise ValueError("--holdout-seeds must be >= 0")
    if len(set(pipelines)) != len(pipelines):
        raise ValueError("--pipeline names a pipeline twice")
    gp_kwargs = None
    if args.gp_options:
        from api.cli.common import parse_json_arg

        gp_kwargs = parse_json_arg(args.gp_options, "--gp-options")
        if not isinstance(gp_kwargs, dict):
            raise ValueError("--gp-options must be a JSON object")
    notes = []
    if not args.no_tpe and not all(o in opts for o in OUTSIDE):
        if importlib.util.find_spec("optuna") is not None:
            opts += [o for o in OUTSIDE if o not in opts]
        else:
            notes.append("optuna is not installed: the Optuna references are skipped")
    for n in notes:
        sys.stderr.write(f"eeipu: note: {n}\n")
    res = run_benchmark(
        pipelines,
        opts,
        args.seeds,
        Path(args.out),
        budget=args.budget,
        n_warmup=args.n_warmup,
        gp_kwargs=gp_kwargs,
        max_trials=args.max_trials or None,
        execution=Execution(
            jobs=args.jobs,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            resume=args.resume,
        ),
        real=RealOptions(
            run_seed=args.run_seed if args.run_seed is not None or not args.holdout_seeds else 1000,
            holdout_seeds=args.holdout_seeds,
            holdout_metric=args.holdout_metric,
            count_proposal_time=True if args.count_proposal_time else None,
            warm_cache=args.warm_cache,
            fix=tuple(args.fix or ()),
            retrains=args.retrains,
            references=args.references,
        ),
    )
    res["notes"] = notes
    if args.report:
        write_report(res, Path(args.report), _optimizers_command(args, pipelines))
        res["report"] = args.report
    if args.json:
        emit_json(res)
    else:
        print(Path(res["markdown"]).read_text())
    return 0


def _optimizers_command(args: argparse.Namespace, pipelines: list[str]) -> str:
    """The ``eeipu bench optimizers`` command line that ``args`` stand for."""
    parts = ["eeipu", "bench", "optimizers"]
    for p in pipelines:
        parts += ["--pipeline", p]
    parts += ["--seeds", str(args.seeds)]
    if args.budget is not None:
        parts += ["--budget", f"{args.budget:g}"]
    if args.optimizers != ",".join(DEFAULT_OPTIMIZERS):
        parts += ["--optimizers", args.optimizers]
    flags = {
        "--no-tpe": args.no_tpe,
        "--warm-cache": args.warm_cache,
        "--count-proposal-time": args.count_proposal_time,
    }
    parts += [k for k, v in flags.items() if v]
    values = {
        "--n-warmup": (args.n_warmup, 10),
        "--jobs": (args.jobs, 1),
        "--max-trials": (args.max_trials, 600),
        "--run-seed": (args.run_seed, None),
        "--holdout-seeds": (args.holdout_seeds, 0),
        "--holdout-metric": (args.holdout_metric, "retrain_score"),
        "--gp-options": (args.gp_options, None),
        "--retrains": (args.retrains, None),
        "--references": (args.references, None),
    }
    for k, (v, default) in values.items():
        if v != default:
            parts += [k, str(v)]
    for f in args.fix or ():
        parts += ["--fix", f]
    parts += ["--out", args.out, "--report", args.report]
    return " ".join(shlex.quote(x) for x in parts)


# ------------------------------------------------------------------------------ unlearning
METHODS = (
    "forget-mi",
    "multidelete",
    "finetune",
    "neggrad-plus",
    "scrub",
    "cf-k",
    "eu-k",
    "retrain",
)


def _register_unlearning(sub: Any) -> None:
    p = sub.add_parser(
        "unlearning",
        help="multimodal unlearning methods vs the retrained model (markdown + CSV table)",
    )
    p.add_argument(
        "--forget-fraction",
        type=float,
        nargs="+",
        default=[0.03, 0.06, 0.10],
        help="fractions of training patients to forget",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of evaluation seeds (0..N-1)")
    p.add_argument("--out", default=None, help="directory for unlearning.md and unlearning.csv")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--tune-methods", nargs="*", default=["forget-mi", "multidelete"], choices=METHODS
    )
    p.add_argument(
        "--tune-trials",
        type=int,
        default=30,
        help="optimizer trials per tuned method and fraction (0: defaults only)",
    )
    p.add_argument("--optimizer", default="eeipu", help="optimizer used for tuning")
    p.add_argument(
        "--tune-objective",
        choices=("band_objective", "objective"),
        default="band_objective",
        help="metric tuned on the tuning seeds: band_objective (retrained bands of the "
        "calibration splits, with a time charge; default) or objective (retrain-free)",
    )
    p.add_argument(
        "--tune-splits",
        type=int,
        default=4,
        help="calibration splits each tuning trial is judged on, by their mean (1 to 16; "
        "default 4); as many fresh ones re-rank the best trials",
    )
    p.add_argument(
        "--tune-around",
        type=float,
        default=0.3,
        help="in (0, 1]: tune only around the embedded defaults, that share of each numeric "
        "parameter's range, categorical choices pinned (default 0.3); 0: the whole space",
    )
    p.add_argument("--source", choices=("openi", "diabetes", "breast_cancer"), default="openi")
    p.add_argument(
        "--label",
        default="abnormal",
        help="abnormal (MeSH not exactly 'normal') or a MeSH heading, e.g. cardiomegaly",
    )
    p.add_argument("--device", default=None, help="cpu (default) or cuda (if available)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--cache", default=None, help="stage cache location (default: a temp dir)")
    p.set_defaults(func=run_unlearning)


def run_unlearning(args: argparse.Namespace) -> int:
    """``eeipu bench unlearning``."""
    from bench.unlearning import DataSource, TuningPlan, run_bench

    cache = None
    if args.cache:
        from cache import open_cache

        cache = open_cache(args.cache)
    res = run_bench(
        fractions=args.forget_fraction,
        seeds=args.seeds,
        out_dir=args.out,
        methods=args.methods,
        tuning=TuningPlan(
            methods=args.tune_methods,
            trials=args.tune_trials,
            optimizer=args.optimizer,
            objective=args.tune_objective,
            splits=args.tune_splits,
            around=args.tune_around,
        ),
        cache=cache,
        data=DataSource(source=args.source, label=args.label, device=args.device),
        threads=args.threads,
    )
    if args.json:
        emit_json(res)
        return 0
    keys = ("test_auc", "forget_auc", "mia_sample_svc", "mia_batch_svc", "unlearn_seconds")
    print(f"{'method':>13} {'config':>7} {'forget':>6} " + " ".join(f"{k:>16}" for k in keys))
    for r in [*res["rows"], *res["tuned_rows"]]:
        cells = " ".join(f"{r[k]:>9.3f}±{r[k + '_std']:.3f}" for k in keys)
        print(f"{r['method']:>13} {r['config']:>7} {r['forget_fraction']:>6.0%} {cells}")
    for k, v in res["rank_correlation"].items():
        print(f"spearman(objective, retrain_score) {k}: {v:.3f}")
    if "files" in res:
        print(f"wrote {res['files']['markdown']} and {res['files']['csv']}")
    return 0
