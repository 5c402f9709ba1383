"""sensor_issues: at most one open stretch per tool, sensor and issue

Two workers handling two telemetry messages of one tool at once (PostgreSQL's read committed lets
both read "no open stretch") could each open the same stretch. A partial unique index makes the
second insert fail; the ingest's transaction then runs again and extends the first worker's row.
Duplicates already stored are closed first (the oldest of each stays open), so the index can be
built on a database that met the race.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 16:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

OPEN = sa.text("end_ts IS NULL")


def upgrade() -> None:
    op.execute(
        "UPDATE sensor_issues SET end_ts = last_ts, closed_ts = received_ts "
        "WHERE end_ts IS NULL AND id NOT IN ("
        "SELECT MIN(id) FROM sensor_issues WHERE end_ts IS NULL GROUP BY tool_id, sensor, issue)"
    )
    op.create_index(
        "uq_sensor_issues_open",
        "sensor_issues",
        ["tool_id", "sensor", "issue"],
        unique=True,
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )


def downgrade() -> None:
    op.drop_index("uq_sensor_issues_open", table_name="sensor_issues")
