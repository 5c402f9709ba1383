"""alerts.evidence, reference_known, likely_mode: what an alert's edge found carries its risk

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("evidence", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("reference_known", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("likely_mode", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("likely_mode")
        batch.drop_column("reference_known")
        batch.drop_column("evidence")
