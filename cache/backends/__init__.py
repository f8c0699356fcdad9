"""Cache storage backends: a local directory (default) and any fsspec URL (shared)."""

from __future__ import annotations

from cache.backends.base import CacheBackend
from cache.backends.fsspec_backend import FsspecBackend
from cache.backends.local import LocalBackend

__all__ = ["CacheBackend", "FsspecBackend", "LocalBackend", "backend_for"]


def backend_for(location: str) -> CacheBackend:
    """A local directory for plain paths, the fsspec backend for ``scheme://`` URLs."""
    if "://" in location:
        return FsspecBackend(location)
    return LocalBackend(location)
