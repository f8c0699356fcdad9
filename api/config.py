"""Embedded defaults shared by the CLI and the service (one place, overridable by env)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


def _env_float(name: str, default: float) -> float:
    v = os.environ.get(name)
    if not v:
        return default
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"${name} must be a number, got {v!r}") from None


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if not v:
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {v!r}") from None


@dataclass
class Settings:
    """Everything the service is configured by (environment first, then CLI overrides).

    One place, so the CLI, the app factory, the workers and the tests agree on defaults.
    """

    db_url: str = field(default_factory=default_db)
    cache: str = field(default_factory=default_cache)
    cache_max_bytes: int | None = field(default_factory=cache_max_bytes)
    # Bearer token for mutating endpoints; without one the server only binds to loopback.
    api_token: str | None = field(default_factory=lambda: os.environ.get("EEIPU_API_TOKEN") or None)
    # Modules from which ``module:attribute`` pipelines may be imported (off by default:
    # importing a module named over HTTP is code execution).
    allowed_pipeline_modules: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            m.strip()
            for m in os.environ.get("EEIPU_ALLOWED_PIPELINE_MODULES", "").split(",")
            if m.strip()
        )
    )
    workers: int = field(default_factory=lambda: _env_int("EEIPU_WORKERS", 2))
    dask: str | None = field(default_factory=lambda: os.environ.get("EEIPU_DASK") or None)
    heartbeat_interval: float = field(
        default_factory=lambda: _env_float("EEIPU_HEARTBEAT_INTERVAL", 2.0)
    )
    heartbeat_timeout: float = field(
        default_factory=lambda: _env_float("EEIPU_HEARTBEAT_TIMEOUT", 30.0)
    )
    max_attempts: int = field(default_factory=lambda: _env_int("EEIPU_MAX_ATTEMPTS", 3))
    scheduler_interval: float = field(
        default_factory=lambda: _env_float("EEIPU_SCHEDULER_INTERVAL", 0.2)
    )
    max_request_bytes: int = field(
        default_factory=lambda: _env_int("EEIPU_MAX_REQUEST_BYTES", 1 << 20)
    )
    max_budget_seconds: float = field(
        default_factory=lambda: _env_float("EEIPU_MAX_BUDGET_SECONDS", 30 * 86400.0)
    )
    max_trials_limit: int = 100_000
    max_parallelism: int = 256

    def validate(self) -> None:
        if self.workers < 0:
            raise ValueError("the number of workers must be >= 0")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat timeout must exceed a positive heartbeat interval")
        if self.max_attempts < 1:
            raise ValueError("max attempts must be >= 1")
        if self.max_request_bytes < 1024:
            raise ValueError("max request bytes must be >= 1024")
