"""Embedded defaults shared by the CLI and the service (one place, overridable by env)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$EEIPU_HOME`` or ``./eeipu-data``: where the default SQLite file and cache live."""
    return Path(os.environ.get("EEIPU_HOME", "eeipu-data"))


def default_cache() -> str:
    return os.environ.get("EEIPU_CACHE", str(data_dir() / "cache"))


def default_db() -> str:
    return os.environ.get("EEIPU_DB", f"sqlite:///{data_dir() / 'eeipu.db'}")


def cache_max_bytes() -> int | None:
    v = os.environ.get("EEIPU_CACHE_MAX_BYTES")
    return int(v) if v else None
