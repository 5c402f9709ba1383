"""risk_points.source_ts: the risk chart on the equipment's clock, as the tool's history

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("risk_points") as batch:
        batch.add_column(sa.Column("source_ts", sa.Float(), nullable=True))
    # The points stored before carry only the edge's send time: the best guess of their source time
    op.execute("UPDATE risk_points SET source_ts = ts")
    with op.batch_alter_table("risk_points") as batch:
        batch.drop_index("ix_risk_points_tool_ts")
        batch.create_index("ix_risk_points_tool_source_ts", ["tool_id", "source_ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("risk_points") as batch:
        batch.drop_index("ix_risk_points_tool_source_ts")
        batch.create_index("ix_risk_points_tool_ts", ["tool_id", "ts"], unique=False)
        batch.drop_column("source_ts")
