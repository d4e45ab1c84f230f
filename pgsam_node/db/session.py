"""Engine and session handling; schema upgrade through Alembic on open."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pgsam_node.errors import DatabaseError

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
    cur = dbapi_conn.cursor()
    # WAL lets the web/API read while the listener writes. synchronous=NORMAL in WAL mode: a
    # commit survives a process crash (kill -9) and the database never corrupts; only a power
    # loss may roll back the last commits. Acknowledged instances stay safe because the spool
    # file is fsynced before the acknowledgement and `index.reindex_spool` re-indexes spool files
    # missing from the database at start-up (FULL would cost one WAL fsync per instance).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, echo: bool = False) -> Engine:
    """Create an engine with the per-dialect settings the node relies on."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # LIFO: a serial caller (one association) gets the same connection, whose page cache is warm.
        engine = create_engine(url, echo=echo, pool_use_lifo=True,
                               connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)
    return engine


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (keeps data across upgrades)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class Database:
    """Owns the engine and hands out sessions.

    Parameters
    ----------
    url
        SQLAlchemy URL (``sqlite:///…`` or ``postgresql+psycopg://…``).
    """

    def __init__(self, url: str, echo: bool = False, migrate: bool = True):
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        try:
            if migrate:
                upgrade_schema(self.engine)
        except OperationalError as exc:
            raise DatabaseError(f"cannot open database ({self.engine.url.render_as_string(hide_password=True)}): {exc.orig}") from exc
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._factory()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: commit on success, rollback on error."""
        with self._factory() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(settings) -> Database:
    """Open (and migrate) the database named by ``settings.database_url``."""
    return Database(settings.database_url, echo=settings.database.echo)
