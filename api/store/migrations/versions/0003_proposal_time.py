"""proposal time: trials.proposal_seconds, studies.count_proposal_time

A trial records its share of the seconds its proposal took; a study says whether that time
counts toward its budget. Studies of an older database keep their old accounting (their
proposals were never counted), so the column's server default is false; new studies always
store the value explicitly.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as b:
        b.add_column(
            sa.Column(
                "count_proposal_time",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
    with op.batch_alter_table("trials") as b:
        b.add_column(sa.Column("proposal_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as b:
        b.drop_column("proposal_seconds")
    with op.batch_alter_table("studies") as b:
        b.drop_column("count_proposal_time")
