"""notifications: alerts and rollbacks sent to webhooks (at least once, retried), and when each alert arrived

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # When the cloud stored each alert (its ts is the edge's): an alert an edge kept through an
    # outage is new to the cloud, and notified, however old its ts. Older rows have none.
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("received_ts", sa.Float(), nullable=True))
    op.create_index("ix_alerts_received_ts", "alerts", ["received_ts"])
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(160), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_ts", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_ts", sa.Float(), nullable=False),
        sa.Column("done_ts", sa.Float(), nullable=True),
        sa.UniqueConstraint("target", "subject", name="uq_notifications_target_subject"),
    )
    op.create_index("ix_notifications_status_next", "notifications", ["status", "next_ts"])


def downgrade() -> None:
    op.drop_index("ix_notifications_status_next", "notifications")
    op.drop_table("notifications")
    op.drop_index("ix_alerts_received_ts", "alerts")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("received_ts")
