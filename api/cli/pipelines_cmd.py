"""``eeipu pipelines [NAME]``: list built-in pipelines or describe one."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("pipelines", help="list built-in pipelines, or describe one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines import builtin_names, get_pipeline

    if args.name is None:
        for n in builtin_names():
            print(n)
        return 0
    print(json.dumps(get_pipeline(args.name).describe(), indent=2))
    return 0
