"""Exact, cheap cache keys: a chain of hashes that never touches stage outputs.

    key(stage) = H("stage", name, version, canonical(params), key(parent))
    key(root)  = H("root", input_fingerprint, seed)

``canonical`` sorts parameter names and writes every float with ``repr`` (the shortest string
that round-trips the exact double), so 0.1 and 0.1000000001 differ, ``{"a":1,"b":2}`` equals
``{"b":2,"a":1}``, and an ``Int`` parameter given as ``1.0`` must be converted to ``1`` by the
caller's search space before it gets here (``bool`` and ``int`` stay distinct). Hashing is
BLAKE2b-128 over a compact JSON document: a few microseconds whatever the output size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_params", "root_key", "stage_key"]


def _token(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite parameter value {value!r} cannot key the cache")
        return {"f": repr(value)}
    if isinstance(value, list | tuple):
        return [_token(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _token(v) for k, v in value.items()}
    raise TypeError(f"parameter value {value!r} of type {type(value).__name__} is not keyable")


def canonical_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON text of one stage's parameters (exact, order-independent)."""
    return json.dumps(_token(dict(params)), sort_keys=True, separators=(",", ":"))


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        b = p.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def root_key(fingerprint: str = "", seed: int | None = None) -> str:
    """Key of the pipeline's input: its data fingerprint and the run's seed."""
    return _digest("root", fingerprint, "" if seed is None else str(int(seed)))


def stage_key(name: str, version: str, params: Mapping[str, Any], parent: str) -> str:
    """Key of one stage's output given its parent's key."""
    return _digest("stage", name, str(version), canonical_params(params), parent)
