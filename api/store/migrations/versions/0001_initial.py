"""initial schema: studies, trials, stage runs

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("pipeline", sa.String(length=300), nullable=False),
        sa.Column("optimizer", sa.String(length=64), nullable=False),
        sa.Column("objective", sa.String(length=200), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("budget_seconds", sa.Float(), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("fixed_params", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("n_complete", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("cost_spent", sa.Float(), nullable=False),
        sa.Column("best_value", sa.Float(), nullable=True),
        sa.Column("best_trial_id", sa.Integer(), nullable=True),
        sa.Column("optimizer_state", sa.JSON(), nullable=True),
        sa.Column("ask_version", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_studies_state"), "studies", ["state"], unique=False)
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("reuse_depth", sa.Integer(), nullable=False),
        sa.Column("predicted_cost", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("cost_seconds", sa.Float(), nullable=True),
        sa.Column("reused_depth", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_trials_state_id", "trials", ["state", "id"], unique=False)
    op.create_index("ix_trials_study_number", "trials", ["study_id", "number"], unique=True)
    op.create_index("ix_trials_study_state", "trials", ["study_id", "state"], unique=False)
    op.create_table(
        "stage_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=True),
        sa.Column("hit", sa.Boolean(), nullable=False),
        sa.Column("cost_seconds", sa.Float(), nullable=False),
        sa.Column("load_seconds", sa.Float(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("original_cost_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_stage_runs_key"), "stage_runs", ["key"], unique=False)
    op.create_index(op.f("ix_stage_runs_study_id"), "stage_runs", ["study_id"], unique=False)
    op.create_index(op.f("ix_stage_runs_trial_id"), "stage_runs", ["trial_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_stage_runs_trial_id"), table_name="stage_runs")
    op.drop_index(op.f("ix_stage_runs_study_id"), table_name="stage_runs")
    op.drop_index(op.f("ix_stage_runs_key"), table_name="stage_runs")
    op.drop_table("stage_runs")
    op.drop_index("ix_trials_study_state", table_name="trials")
    op.drop_index("ix_trials_study_number", table_name="trials")
    op.drop_index("ix_trials_state_id", table_name="trials")
    op.drop_table("trials")
    op.drop_index(op.f("ix_studies_state"), table_name="studies")
    op.drop_table("studies")
