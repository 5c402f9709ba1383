"""alerts.ack_finding, ack_note, ack_ts: what the person who acknowledged an alert found on the tool

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 10:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("ack_finding", sa.String(16), nullable=True))
        batch.add_column(sa.Column("ack_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("ack_ts", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("ack_ts")
        batch.drop_column("ack_note")
        batch.drop_column("ack_finding")
