"""Helpers shared by CLI sub-commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from api import config


def add_cache_arg(p: Any) -> None:
    p.add_argument(
        "--cache",
        default=None,
        help="cache location: a directory or an fsspec URL (default: $EEIPU_CACHE or "
        "./eeipu-data/cache)",
    )
    p.add_argument(
        "--cache-max-bytes",
        type=int,
        default=None,
        help="cache size budget in bytes (default: $EEIPU_CACHE_MAX_BYTES or unlimited)",
    )


def add_db_arg(p: Any, what: str = "trial store URL") -> None:
    p.add_argument(
        "--db",
        default=None,
        help=f"{what} (default: $EEIPU_DB or the SQLite file ./eeipu-data/eeipu.db)",
    )


def db_url_from(args: Any) -> str:
    """The database URL that ``--db`` names (an empty one is refused, not defaulted)."""
    db = getattr(args, "db", None)
    if db is None:
        return config.default_db()
    if not str(db).strip():
        raise ValueError("--db is empty: give a database URL, or leave --db out for the default")
    return str(db)


def cache_location(args: Any, must_exist: bool = False) -> str:
    """The cache ``--cache`` names; a local one must be a directory (and exist if asked)."""
    loc = args.cache if args.cache is not None else config.default_cache()
    if not str(loc).strip():
        raise ValueError("--cache is empty: give a directory or URL, or leave it out")
    if "://" not in loc:
        path = Path(loc)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--cache {loc!r} is not a directory")
        if must_exist and not path.is_dir():
            raise ValueError(f"no cache at {loc!r}")
    return str(loc)


def open_cache_from(args: Any, must_exist: bool = False) -> Any:
    from cache import open_cache

    if args.cache_max_bytes is not None and args.cache_max_bytes < 1:
        raise ValueError(f"--cache-max-bytes must be >= 1, got {args.cache_max_bytes}")
    loc = cache_location(args, must_exist)
    return open_cache(loc, max_bytes=args.cache_max_bytes or config.cache_max_bytes())


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e.msg} at position {e.pos}") from None


def emit_json(obj: Any) -> None:
    """Print one JSON object as the last line of standard output."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()
