"""Upgrading an older SQLite database keeps every row.

SQLite applies most Alembic batch operations by copying the table and dropping the old one;
with foreign keys on, that drop would cascade into every trial and stage run of the study.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from api.store import open_store
from api.store.sql import MIGRATIONS

N_TRIALS = 7


def _database_at(path: Path, revision: str) -> None:
    """A SQLite file migrated to ``revision`` holding one study with trials and stage runs."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO studies (id, name, pipeline, optimizer, objective, direction, budget_seconds,"
        " seed, parallelism, fixed_params, mode, state, created_at, updated_at, n_trials,"
        " n_complete, n_failed, cost_spent, ask_version)"
        " VALUES (1, 'old', 'synthetic-3stage', 'random', 'objective', 'maximize', 100.0,"
        f" 0, 1, '{{}}', 'ask_tell', 'completed', 0, 0, {N_TRIALS}, {N_TRIALS}, 0, 7.0, 0)"
    )
    for i in range(N_TRIALS):
        db.execute(
            "INSERT INTO trials (id, study_id, number, state, params, reuse_depth, created_at,"
            " attempts, value, cost_seconds, reused_depth, failures, metrics)"
            " VALUES (?, 1, ?, 'COMPLETE', ?, 0, 0, 1, ?, 1.0, 0, '[]', ?)",
            (i + 1, i, json.dumps({"s1": {"x": i}}), float(i), json.dumps({"objective": i})),
        )
        db.execute(
            "INSERT INTO stage_runs (trial_id, study_id, position, stage, key, hit,"
            " cost_seconds, load_seconds, bytes, original_cost_seconds)"
            " VALUES (?, 1, 0, 's1', NULL, 0, 1.0, 0.0, 0, 1.0)",
            (i + 1,),
        )
    db.commit()
    db.close()


def _counts(path: Path) -> tuple[int, int, int]:
    db = sqlite3.connect(path)
    try:
        return tuple(
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("studies", "trials", "stage_runs")
        )
    finally:
        db.close()


def test_upgrade_from_first_revision_keeps_trials_and_stage_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _database_at(path, "0001")
    assert _counts(path) == (1, N_TRIALS, N_TRIALS)
    store = open_store(f"sqlite:///{path}")
    try:
        trials = store.list_trials(1)
        assert [t.value for t in trials] == [float(i) for i in range(N_TRIALS)]
    finally:
        store.close()
    assert _counts(path) == (1, N_TRIALS, N_TRIALS)
    db = sqlite3.connect(path)
    try:  # foreign keys still enforced for the store's own connections afterwards
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
