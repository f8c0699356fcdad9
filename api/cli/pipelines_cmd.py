"""``eeipu pipelines [NAME]``: list built-in pipelines, or describe one.

A description shows what a study needs to know: each stage's search space (type, range, log
scale, choices), the pipeline's default configuration, and its metrics, which are the valid
``--objective`` values. Output is written and flushed inside the command, so a reader that
closes the pipe early (``| head -1``) ends it through ``main``'s quiet broken-pipe path.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pipelines",
        help="list built-in pipelines, or describe one (spaces, defaults, metrics)",
    )
    p.add_argument(
        "name", nargs="?", help="a built-in name or package.module:attribute to describe"
    )
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run)


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def _range(p: dict[str, Any]) -> str:
    if p["type"] == "categorical":
        return "choices " + ", ".join(_value(c) for c in p["choices"])
    return f"[{p['low']}, {p['high']}]" + (" log" if p.get("log") else "")


def describe_lines(d: dict[str, Any]) -> list[str]:
    """The human-readable description of ``Pipeline.describe()``'s data."""
    lines = [f"{d['name']}: {d['description']}" if d.get("description") else d["name"]]
    lines.append(f"objective: {d['objective']} ({d['direction']})")
    lines.append("metrics (valid --objective values): " + ", ".join(d["metrics"]))
    defaults: dict[str, dict[str, Any]] = d.get("defaults") or {}
    for st in d["stages"]:
        lines.append(f"stage {st['name']} (version {st['version']}):")
        if not st["space"]:
            lines.append("  (no parameters)")
        width = max((len(k) for k in st["space"]), default=0)
        for k, p in st["space"].items():
            line = f"  {k:<{width}}  {p['type']:<11}  {_range(p)}"
            stage_defaults = defaults.get(st["name"], {})
            if k in stage_defaults:
                line += f"  default {_value(stage_defaults[k])}"
            lines.append(line)
    if not defaults:
        lines.append("defaults: none")
    return lines


def _write(lines: list[str]) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    out.flush()  # here, so a closed pipe raises inside the command, not at interpreter exit


def run(args: argparse.Namespace) -> int:
    from pipelines import builtin_names, get_pipeline

    if args.name is None:
        names = builtin_names()
        _write([json.dumps(names)] if args.json else names)
        return 0
    d = get_pipeline(args.name).describe()
    _write([json.dumps(d, indent=2)] if args.json else describe_lines(d))
    return 0
