"""sensor_issues: each stretch in which a sensor of a tool looked wrong (stuck, or Bad)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sensor_issues",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tool_id", sa.String(128), nullable=False),
        sa.Column("edge_id", sa.String(128), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("sensor", sa.String(128), nullable=False),
        sa.Column("issue", sa.String(16), nullable=False),
        sa.Column("start_ts", sa.Float(), nullable=False),
        sa.Column("last_ts", sa.Float(), nullable=False),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("end_ts", sa.Float(), nullable=True),
        sa.Column("received_ts", sa.Float(), nullable=False),
        sa.Column("closed_ts", sa.Float(), nullable=True),
    )
    op.create_index("ix_sensor_issues_tool_end", "sensor_issues", ["tool_id", "end_ts"])
    op.create_index("ix_sensor_issues_received_ts", "sensor_issues", ["received_ts"])
    op.create_index("ix_sensor_issues_closed_ts", "sensor_issues", ["closed_ts"])


def downgrade() -> None:
    op.drop_index("ix_sensor_issues_closed_ts", "sensor_issues")
    op.drop_index("ix_sensor_issues_received_ts", "sensor_issues")
    op.drop_index("ix_sensor_issues_tool_end", "sensor_issues")
    op.drop_table("sensor_issues")
