"""risk_points: each tool's risk per mode over time, from the edges' telemetry

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "risk_points",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tool_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("risk", sa.JSON(), nullable=False),
    )
    op.create_index("ix_risk_points_ts", "risk_points", ["ts"])
    op.create_index("ix_risk_points_tool_ts", "risk_points", ["tool_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_risk_points_tool_ts", "risk_points")
    op.drop_index("ix_risk_points_ts", "risk_points")
    op.drop_table("risk_points")
