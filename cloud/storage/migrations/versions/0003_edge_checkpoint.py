"""models.edge_checkpoint: the torch checkpoint a release was exported from

A learning round can distil its edge model starting from the running model's weights
(``learning.warm_start_edge``), so the registry keeps where those weights are.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:  # batch: SQLite alters tables by copying them
        batch.add_column(sa.Column("edge_checkpoint", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("edge_checkpoint")
