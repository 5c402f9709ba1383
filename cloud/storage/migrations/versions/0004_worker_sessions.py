"""worker_sessions: each cloud worker's MQTT session and its heartbeat

Mosquitto keeps routing a share of a shared subscription's messages to a persistent session
whose client is gone; the table lets a live worker find such a session and adopt it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 04:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_sessions",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("share_group", sa.String(128), nullable=False),
        sa.Column("heartbeat_ts", sa.Float(), nullable=False),
        sa.Column("leaving", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_sessions")
