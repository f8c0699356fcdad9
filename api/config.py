"""Settings of the CLI and the service: one ``pydantic-settings`` class read from ``EEIPU_*``.

``Settings()`` reads the environment (``EEIPU_<FIELD>``; the database URL is ``EEIPU_DB``),
then the CLI overrides fields by assignment and calls ``validate()``. The functions below
(``data_dir``, ``default_db``, ``default_cache``, ``cache_max_bytes``) read the same class, so
CLI commands that need only one location agree with the server on every default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "cache_max_bytes", "data_dir", "default_cache", "default_db"]


def _split_csv(v: Any) -> Any:
    """``"a, b,,c"`` -> ``("a", "b", "c")`` (lists from code pass through)."""
    if isinstance(v, str):
        return tuple(m.strip() for m in v.split(",") if m.strip())
    return v


class Settings(BaseSettings):
    """Everything the service is configured by (environment first, then CLI overrides).

    One place, so the CLI, the app factory, the workers and the tests agree on defaults.
    """

    model_config = SettingsConfigDict(
        env_prefix="EEIPU_",
        env_ignore_empty=True,
        populate_by_name=True,
        extra="ignore",
    )

    # Where the default SQLite file and cache live.
    home: Path = Path("eeipu-data")
    db_url: str = Field(default="", validation_alias=AliasChoices("EEIPU_DB", "EEIPU_DB_URL"))
    cache: str = ""
    cache_max_bytes: int | None = Field(default=None, ge=0)
    # Bearer token for mutating endpoints; without one the server only binds to loopback.
    api_token: str | None = Field(default=None, max_length=4096)
    # Modules from which ``module:attribute`` pipelines may be imported (off by default:
    # importing a module named over HTTP is code execution). Comma-separated in the env.
    allowed_pipeline_modules: Annotated[tuple[str, ...], NoDecode] = ()
    # Host names (``Host`` header, ``Origin`` host) accepted besides loopback names and the
    # address the server is bound to: a request for any other host is a DNS-rebinding attempt.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    workers: int = 2
    dask: str | None = None
    heartbeat_interval: float = Field(default=2.0, allow_inf_nan=False)
    heartbeat_timeout: float = Field(default=30.0, allow_inf_nan=False)
    max_attempts: int = 3
    scheduler_interval: float = Field(default=0.2, gt=0, allow_inf_nan=False)
    max_request_bytes: int = 1 << 20
    max_budget_seconds: float = Field(default=30 * 86400.0, gt=0, le=1e9, allow_inf_nan=False)
    max_trials_limit: int = Field(default=100_000, ge=1, le=10_000_000)
    max_parallelism: int = Field(default=256, ge=1, le=100_000)

    @field_validator("allowed_pipeline_modules", "allowed_hosts", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        return _split_csv(v)

    @field_validator("api_token", "dask", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return v or None

    @model_validator(mode="after")
    def _defaults_and_checks(self) -> Settings:
        if not self.db_url:
            self.db_url = f"sqlite:///{self.home / 'eeipu.db'}"
        if not self.cache:
            self.cache = str(self.home / "cache")
        self.validate()
        return self

    def validate(self) -> None:  # type: ignore[override]
        """Raise ``ValueError`` for inconsistent values (also after CLI overrides)."""
        if self.workers < 0:
            raise ValueError("the number of workers must be >= 0")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat timeout must exceed a positive heartbeat interval")
        if self.max_attempts < 1:
            raise ValueError("max attempts must be >= 1")
        if self.max_request_bytes < 1024:
            raise ValueError("max request bytes must be >= 1024")


def data_dir() -> Path:
    """``$EEIPU_HOME`` or ``./eeipu-data``: where the default SQLite file and cache live."""
    return Settings().home


def default_cache() -> str:
    return Settings().cache


def default_db() -> str:
    return Settings().db_url


def cache_max_bytes() -> int | None:
    return Settings().cache_max_bytes
