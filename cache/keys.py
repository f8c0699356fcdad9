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
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["KEY_LENGTH", "InvalidKey", "canonical_params", "check_key", "root_key", "stage_key"]

KEY_LENGTH = 32
_KEY_RE = re.compile(r"[0-9a-f]{32}")


class InvalidKey(ValueError):
    """A value offered as a cache key is not exactly the form the cache makes.

    Keys end up in file names, so anything else (``../x``, NUL bytes, other lengths) is
    refused before it can name a file."""


def check_key(key: object) -> str:
    """Return ``key`` if it is a cache key (32 lowercase hex chars), else raise ``InvalidKey``.

    Every entrance (HTTP, CLI, trial store, each backend) calls this, because a key that is
    not one the cache made can only be a mistake or an attack."""
    if isinstance(key, str) and _KEY_RE.fullmatch(key):
        return key
    shown = repr(key)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise InvalidKey(f"invalid cache key {shown}: a cache key is {KEY_LENGTH} lowercase hex chars")


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
        tok = _mapping_token(value)
        # A nested mapping shaped like a float's token ({"f": ...}) or like this escape
        # ({"m": ...}) is wrapped, so no mapping and no float ever share a token; every
        # other mapping keeps its plain form (and its keys stay what they always were).
        return {"m": tok} if len(tok) == 1 and next(iter(tok)) in ("f", "m") else tok
    raise TypeError(f"parameter value {value!r} of type {type(value).__name__} is not keyable")


def _mapping_token(value: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):  # str(1) == str("1") would make two mappings one key
            raise TypeError(f"parameter names must be strings, got {k!r}")
        out[k] = _token(v)
    return out


def canonical_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON text of one stage's parameters (exact, order-independent)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"parameters must be a mapping, got {type(params).__name__}")
    return json.dumps(_mapping_token(params), sort_keys=True, separators=(",", ":"))


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
