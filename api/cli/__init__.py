"""The ``eeipu`` command line.

Each sub-command lives in its own module of this package with a ``register(subparsers)``
function; modules are discovered from ``COMMANDS`` so the areas of the product stay apart.
Bad input exits with code 2 and one line on standard error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

COMMANDS = ("run", "tune", "bench", "cache_cmd", "serve", "studies", "worker", "pipelines_cmd")


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _import_optional(name: str) -> Any | None:
    full = f"{__name__}.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="eeipu", description="Memoization-aware tuning of staged pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        mod = _import_optional(name)
        if mod is not None:
            mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (UsageError, ValueError, KeyError, PermissionError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.stderr.write(f"eeipu: error: {' '.join(str(msg).split())}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("eeipu: interrupted\n")
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
