"""indexes the hourly retention prune cuts its chunks by (de-duplication keys, events, dead letters)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 07:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_seen_messages_received_ts", "seen_messages", ["received_ts"])
    op.create_index("ix_events_source_ts", "events", ["source_ts"])
    op.create_index("ix_dead_letters_received_ts", "dead_letters", ["received_ts"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_received_ts", "dead_letters")
    op.drop_index("ix_events_source_ts", "events")
    op.drop_index("ix_seen_messages_received_ts", "seen_messages")
