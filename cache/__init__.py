"""Stage cache: every stage output stored under an exact key, verified on load.

Ground floor: knows nothing of the optimizer, the pipelines or the service. The optimizer sees
what is cached only as plain data (``EntryInfo.to_dict()``).
"""

from __future__ import annotations

from cache.backends import CacheBackend, FsspecBackend, LocalBackend, backend_for
from cache.format import CorruptEntry
from cache.keys import InvalidKey, canonical_params, check_key, root_key, stage_key
from cache.store import EntryInfo, Hit, StageCache

__all__ = [
    "CacheBackend",
    "CorruptEntry",
    "EntryInfo",
    "FsspecBackend",
    "Hit",
    "InvalidKey",
    "LocalBackend",
    "StageCache",
    "backend_for",
    "canonical_params",
    "check_key",
    "open_cache",
    "root_key",
    "stage_key",
]


def open_cache(location: str, max_bytes: int | None = None) -> StageCache:
    """A cache at a local path (default backend) or an fsspec URL (shared backend)."""
    return StageCache(backend_for(location), max_bytes=max_bytes)
