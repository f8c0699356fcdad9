"""ORM models of the trial store (SQLAlchemy 2.0 typed declarative).

Kept apart from the API schemas: these are the tables, and Alembic migrations in
``api/store/migrations`` create and evolve them (never ``create_all``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "studies"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - ids are never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(200))
    pipeline: Mapped[str] = mapped_column(String(300))
    optimizer: Mapped[str] = mapped_column(String(64))
    objective: Mapped[str] = mapped_column(String(200))
    direction: Mapped[str] = mapped_column(String(16))
    budget_seconds: Mapped[float] = mapped_column(Float)
    max_trials: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    parallelism: Mapped[int] = mapped_column(Integer, default=1)
    fixed_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mode: Mapped[str] = mapped_column(String(16), default="managed")
    # migration 0002: the study options of every cache key and of stopping
    run_seed: Mapped[int | None] = mapped_column(BigInteger)
    budget_margin: Mapped[float] = mapped_column(Float, default=0.0)
    max_consecutive_failures: Mapped[int] = mapped_column(Integer, default=5)
    # migration 0003: whether a trial's share of the proposal time counts toward the budget
    count_proposal_time: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    n_trials: Mapped[int] = mapped_column(Integer, default=0)
    n_complete: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    cost_spent: Mapped[float] = mapped_column(Float, default=0.0)
    best_value: Mapped[float | None] = mapped_column(Float)
    best_trial_id: Mapped[int | None] = mapped_column(Integer)
    optimizer_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ask_version: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (
        Index("ix_trials_study_number", "study_id", "number", unique=True),
        Index("ix_trials_state_id", "state", "id"),
        Index("ix_trials_study_state", "study_id", "state"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    reuse_depth: Mapped[int] = mapped_column(Integer, default=0)
    predicted_cost: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float)
    cost_seconds: Mapped[float | None] = mapped_column(Float)
    reused_depth: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # migration 0003: the trial's share of the seconds its proposal took (None: older rows)
    proposal_seconds: Mapped[float | None] = mapped_column(Float)


class StageRunRow(Base):
    __tablename__ = "stage_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(200))
    key: Mapped[str | None] = mapped_column(String(128), index=True)
    hit: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    load_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    original_cost_seconds: Mapped[float] = mapped_column(Float, default=0.0)
