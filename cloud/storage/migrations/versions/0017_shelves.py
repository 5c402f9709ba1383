"""shelves: stretches in which an operator shelved a tool's notifications

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shelves",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tool_id", sa.String(128), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("start_ts", sa.Float(), nullable=False),
        sa.Column("planned_end_ts", sa.Float(), nullable=False),
        sa.Column("end_ts", sa.Float(), nullable=False),
        sa.Column("ended_by", sa.String(128), nullable=True),
    )
    op.create_index("ix_shelves_tool_end", "shelves", ["tool_id", "end_ts"])
    op.create_index("ix_shelves_end_ts", "shelves", ["end_ts"])


def downgrade() -> None:
    op.drop_index("ix_shelves_end_ts", "shelves")
    op.drop_index("ix_shelves_tool_end", "shelves")
    op.drop_table("shelves")
