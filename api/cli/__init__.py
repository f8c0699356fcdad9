"""The ``eeipu`` command line.

Each sub-command lives in its own module of this package with a ``register(subparsers)``
function; modules are discovered from ``COMMANDS`` so the areas of the product stay apart.
Packages beside the product (the benchmarks) add commands as plugins: every entry point of
the group ``eeipu.cli`` names such a ``register`` function, so ``api`` never imports them.

Bad input exits with code 2 and one line on standard error, never a traceback: ``main()``
maps the domain errors of ``api.errors``, the client's errors, the usual value and file errors
and the database driver's errors to that line in one place, so no sub-command has to. A reader
that closes the pipe early (``eeipu ... | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NoReturn

from api.cli.interrupts import Terminated

COMMANDS = ("run", "tune", "cache_cmd", "serve", "studies", "worker", "pipelines_cmd", "report")
PLUGIN_GROUP = "eeipu.cli"
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE
MAX_MESSAGE = 1000


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default (unless the text already does)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not shows_default(action):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should name the default of ``action`` (a real value, not a flag's)."""
    d = action.default
    if not action.option_strings or d is None or d is False or d is argparse.SUPPRESS:
        return False  # identity: 0 and 0.0 are real defaults that ``in`` would take for False
    return not isinstance(action, argparse._HelpAction | argparse._StoreConstAction)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if not action.help and shows_default(action):
            action.help = "(default: %(default)s)"  # the formatter skips options without help
        return action

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        raise SystemExit(EXIT_USAGE)


def _import_optional(name: str) -> Any | None:
    full = f"{__name__}.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return None
        raise


def _plugins() -> list[Callable[[Any], None]]:
    """The ``register`` functions of the entry points of ``PLUGIN_GROUP``, one per name.

    A plugin whose module is gone (metadata left by an uninstalled package) is skipped; any
    other error inside a plugin propagates.
    """
    seen: dict[str, EntryPoint] = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        seen.setdefault(ep.name, ep)
    out = []
    for name in sorted(seen):
        ep = seen[name]
        try:
            out.append(ep.load())
        except ModuleNotFoundError as e:
            if e.name is None or not (ep.module + ".").startswith(e.name + "."):
                raise
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="eeipu", description="Memoization-aware tuning of staged pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        mod = _import_optional(name)
        if mod is not None:
            mod.register(sub)
    for register in _plugins():
        register(sub)
    return parser


def one_line(text: object) -> str:
    """``text`` with its whitespace collapsed to single spaces, cut to a readable length."""
    s = " ".join(str(text).split())
    return s if len(s) <= MAX_MESSAGE else s[: MAX_MESSAGE - 3] + "..."


def _from_library(exc: BaseException, *packages: str) -> bool:
    return any(
        c.__module__.split(".")[0] in packages for c in type(exc).__mro__ if c is not Exception
    )


def error_message(exc: BaseException) -> str | None:
    """The one line that reports ``exc`` as bad input, or ``None`` for a defect (traceback)."""
    from api.errors import ServiceError

    if isinstance(exc, ServiceError):
        return one_line(exc.message)
    if isinstance(exc, KeyError):
        return one_line(exc.args[0] if exc.args else exc)
    if isinstance(exc, UsageError | ValueError | OSError | TimeoutError):
        if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
            return one_line(f"{exc.filename}: {exc.strerror}")
        return one_line(exc) or type(exc).__name__
    client = sys.modules.get("api.client")  # not imported: no client error can exist
    if client is not None and isinstance(exc, client.ClientError):
        return one_line(exc.message if exc.status == 0 else exc)
    if isinstance(exc, Exception) and _from_library(exc, "sqlalchemy", "alembic"):
        orig = getattr(exc, "orig", None)
        text = str(orig if orig is not None else exc).split("(Background on this error")[0]
        return one_line(f"database error: {text.strip() or type(exc).__name__}")
    return None


def _quiet_broken_pipe() -> int:
    # Python's advice (signal docs, "Note on SIGPIPE"): point stdout at devnull so the
    # interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        rc = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        sys.stderr.write("eeipu: interrupted\n")
        return 130
    except Terminated:
        sys.stderr.write("eeipu: terminated\n")
        return 143
    except Exception as e:
        msg = error_message(e)
        if msg is None:
            raise
        sys.stderr.write(f"eeipu: error: {msg}\n")
        return EXIT_USAGE
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
