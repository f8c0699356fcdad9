"""The trial store: studies, trials and stage runs (the service's source of truth).

``TrialStore`` (in ``base``) is the contract; ``open_store(url)`` returns the SQL backend for
``sqlite:///...`` or ``postgresql://...`` URLs, with migrations applied.
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
    """The store at ``url`` (schema migrated to the newest revision unless told not to)."""
    from api.store.sql import SQLTrialStore

    return SQLTrialStore(url, run_migrations=run_migrations, pool_size=pool_size)
