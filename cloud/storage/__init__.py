"""Storage: SQLAlchemy tables (:mod:`.models`), engine and Alembic migrations (:mod:`.db`) and
the queries the rest of the cloud uses (:mod:`.repo`)."""

from cloud.storage.db import make_engine, migrate
from cloud.storage.repo import Duplicate, Repo

__all__ = ["Duplicate", "Repo", "make_engine", "migrate"]
