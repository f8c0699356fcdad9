"""``eeipu bench unlearning``: every unlearning method vs the retrained model on Open-i.

Thin wrapper: the protocol lives in ``api.bench_unlearning``.
"""

from __future__ import annotations

import argparse
from typing import Any

from api.cli.common import emit_json

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


def register(sub: Any) -> None:
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
    p.add_argument("--source", choices=("openi", "diabetes"), default="openi")
    p.add_argument(
        "--label",
        default="abnormal",
        help="abnormal (MeSH not exactly 'normal') or a MeSH heading, e.g. cardiomegaly",
    )
    p.add_argument("--device", default=None, help="cpu (default) or cuda (if available)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--cache", default=None, help="stage cache location (default: a temp dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from api.bench_unlearning import run_bench

    cache = None
    if args.cache:
        from cache import open_cache

        cache = open_cache(args.cache)
    res = run_bench(
        fractions=args.forget_fraction,
        seeds=args.seeds,
        out_dir=args.out,
        methods=args.methods,
        tune_methods=args.tune_methods,
        tune_trials=args.tune_trials,
        optimizer=args.optimizer,
        cache=cache,
        source=args.source,
        device=args.device,
        threads=args.threads,
        label=args.label,
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
