"""Helpers shared by CLI sub-commands."""

from __future__ import annotations

import json
import sys
from typing import Any

from api import config


def add_cache_arg(p: Any) -> None:
    p.add_argument(
        "--cache",
        default=None,
        help="cache location: a directory or an fsspec URL (default: $EEIPU_CACHE or "
        "./eeipu-data/cache)",
    )
    p.add_argument("--cache-max-bytes", type=int, default=None, help="cache size budget in bytes")


def open_cache_from(args: Any) -> Any:
    from cache import open_cache

    loc = args.cache or config.default_cache()
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
