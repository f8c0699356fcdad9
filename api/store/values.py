"""Bounds of the numbers the trial store keeps: checked on write, repaired on read.

Writes: every number that arrives is refused (``api.errors.InvalidRequest``, before anything
is written) unless it is finite and inside its bound, so a sum of them stays finite. Reads: an
older version stored whatever it was given (``1e308`` costs, ``inf`` sums, ``NaN`` metrics), and
one such value made every JSON answer that held it fail; so every read maps a non-finite or
out-of-range float to None (or 0.0 where a field cannot be None) and leaves it out of sums.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from api.errors import InvalidRequest
from cache.keys import InvalidKey, check_key

MAX_SECONDS = 1e9  # a cost, a duration, a budget or a margin
MAX_SUM_SECONDS = 1e15  # a study's summed cost (a million trials at the largest cost)
MAX_VALUE = 1e300  # an objective value or a metric
MAX_TIMESTAMP = 1e11  # seconds since the epoch (year 5138)
MAX_INT = 2**62
MAX_SEED = 2**63 - 1
MAX_CONSECUTIVE_FAILURES = 1000
MAX_BYTES = 2**62


def finite(x: object, bound: float, low: float | None = None) -> float | None:
    """``x`` as a float if it is a real number in ``[low, bound]`` (``[-bound, bound]`` when
    ``low`` is None), else None: the read side's repair of any stored float."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        f = float(x)
    except (OverflowError, ValueError):
        return None
    lo = -bound if low is None else low
    if not math.isfinite(f) or f < lo or f > bound:
        return None
    return f


def clean_json(obj: Any, bound: float = MAX_VALUE) -> Any:
    """A JSON value with every non-finite or out-of-range float replaced by None."""
    if isinstance(obj, float) or (isinstance(obj, int) and abs(obj) > bound):
        return finite(obj, bound)
    if isinstance(obj, dict):
        return {k: clean_json(v, bound) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_json(v, bound) for v in obj]
    return obj


def clean_metrics(m: object) -> dict[str, float | None] | None:
    """Stored metrics as the API shows them: a mapping of names to finite numbers or None."""
    if not isinstance(m, Mapping):
        return None
    return {str(k): finite(v, MAX_VALUE) for k, v in m.items()}


# a token Python's encoder writes for a non-finite float, or a number of 1e100 or more
_SUSPECT = re.compile(r"NaN|Infinity|[eE]\+?\d{3}|\d{100}")


def json_text(text: str | None, default: str) -> str:
    """Stored JSON text made safe to splice into an answer: unchanged unless it may hold a
    non-finite or absurd number (``_SUSPECT``, e.g. ``NaN`` or ``1e999``); then decoded,
    cleaned and encoded again (``default`` if unreadable)."""
    if text is None:
        return default
    if not _SUSPECT.search(text):
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return default
    return json.dumps(clean_json(obj), separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------- write checks
def _shown(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def check_number(name: str, x: object, bound: float, low: float | None = 0.0) -> float:
    """``x`` as a float if it is a finite real number in ``[low, bound]``, else
    ``InvalidRequest`` naming the field."""
    f = finite(x, bound, low)
    if f is None:
        lo = -bound if low is None else low
        raise InvalidRequest(
            f"{name} must be a finite number in [{lo:g}, {bound:g}], not {_shown(x)}",
            "invalid_number",
        )
    return f


def check_int(name: str, x: object, low: int, high: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not low <= x <= high:
        raise InvalidRequest(
            f"{name} must be an integer in [{low}, {high}], not {_shown(x)}", "invalid_number"
        )
    return x


def check_optional_number(name: str, x: object, bound: float, low: float | None = 0.0) -> None:
    if x is not None:
        check_number(name, x, bound, low)


def check_json_numbers(name: str, obj: Any) -> None:
    """Refuse a JSON document (params, optimizer state) holding a non-finite float."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise InvalidRequest(f"{name} holds a non-finite number {obj!r}", "invalid_number")
    if isinstance(obj, Mapping):
        for v in obj.values():
            check_json_numbers(name, v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            check_json_numbers(name, v)


def check_stage_key(key: object) -> str | None:
    """A stage run's key: None (not cached) or a cache key (``cache.keys.check_key``)."""
    if key is None:
        return None
    try:
        return check_key(key)
    except InvalidKey as e:
        raise InvalidRequest(str(e), "invalid_key") from None


def valid_key(key: object) -> bool:
    try:
        check_key(key)
    except InvalidKey:
        return False
    return True
