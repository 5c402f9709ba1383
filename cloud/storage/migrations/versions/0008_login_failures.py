"""login_failures: the login throttle's counters, shared by the workers and kept across restarts

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("username", sa.String(128), primary_key=True),
        sa.Column("client", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("blocked_until", sa.Float(), nullable=False),
        sa.Column("last_ts", sa.Float(), nullable=False),
    )
    op.create_index("ix_login_failures_last_ts", "login_failures", ["last_ts"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_last_ts", "login_failures")
    op.drop_table("login_failures")
