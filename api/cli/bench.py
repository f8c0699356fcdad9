"""``eeipu bench <what>``: benchmark commands that print their figures.

Sub-benchmarks live in ``bench_<what>.py`` modules next to this one.
"""

from __future__ import annotations

import importlib
from typing import Any

BENCHES = ("bench_cache", "bench_optimizers", "bench_suggest", "bench_unlearning", "bench_api")


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks (print their figures; --json for one line)")
    bsub = p.add_subparsers(dest="bench", required=True, parser_class=type(p))
    for name in BENCHES:
        full = f"api.cli.{name}"
        try:
            mod = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name == full:
                continue
            raise
        mod.register(bsub)
