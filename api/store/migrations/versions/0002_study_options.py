"""study options: run_seed, budget_margin, max_consecutive_failures

A study's stop reason is kept in the existing ``studies.error`` column (written with the
state by ``set_study_state``), so it needs no column of its own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server defaults fill the rows of an older database (the defaults of ``StudySpec``)
    with op.batch_alter_table("studies") as b:
        b.add_column(sa.Column("run_seed", sa.BigInteger(), nullable=True))
        b.add_column(
            sa.Column("budget_margin", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
        b.add_column(
            sa.Column(
                "max_consecutive_failures",
                sa.Integer(),
                nullable=False,
                server_default=sa.text("5"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("studies") as b:
        b.drop_column("max_consecutive_failures")
        b.drop_column("budget_margin")
        b.drop_column("run_seed")
