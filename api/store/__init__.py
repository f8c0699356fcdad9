"""The trial store: studies, trials and stage runs (the service's source of truth).

``TrialStore`` (in ``base``) is the contract; ``open_store(url)`` returns the SQL backend for
``sqlite:///...``, ``memory://`` (SQLite in memory, one shared connection, thread-safe) or
``postgresql://...`` URLs (every spelling runs on psycopg 3), with migrations applied.
A malformed URL raises ``api.errors.InvalidRequest``; an unreachable database
``api.errors.Unavailable``.
"""

from __future__ import annotations

from api.store.base import (
    FINISHED,
    NewTrial,
    StageRun,
    StaleClaim,
    Study,
    StudySpec,
    StudyState,
    Trial,
    TrialResult,
    TrialState,
    TrialStore,
)

__all__ = [
    "FINISHED",
    "NewTrial",
    "StageRun",
    "StaleClaim",
    "Study",
    "StudySpec",
    "StudyState",
    "Trial",
    "TrialResult",
    "TrialState",
    "TrialStore",
    "open_store",
]


def open_store(url: str, run_migrations: bool = True, pool_size: int = 10) -> TrialStore:
    """The store at ``url`` (schema migrated to the newest revision unless told not to; an
    in-memory store is always migrated: it starts empty)."""
    from api.store.sql import SQLTrialStore

    return SQLTrialStore(url, run_migrations=run_migrations, pool_size=pool_size)
