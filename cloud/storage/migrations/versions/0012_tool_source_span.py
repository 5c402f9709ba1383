"""tools.first_source_ts, last_source_ts: the span each tool reported over, on the equipment's clock

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tools") as batch:
        batch.add_column(sa.Column("first_source_ts", sa.Float(), nullable=True))
        batch.add_column(sa.Column("last_source_ts", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tools") as batch:
        batch.drop_column("last_source_ts")
        batch.drop_column("first_source_ts")
