"""Alembic environment, run programmatically by :func:`cloud.storage.db.migrate` (no alembic.ini).

The caller passes an open connection in ``config.attributes["connection"]``; the schema it
brings up to date is :data:`cloud.storage.models.Base.metadata`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cloud.storage.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("cloud migrations run through cloud.storage.db.migrate(), which passes a connection")
_run(connection)
