"""Alembic environment: the database URL comes from ``core.db.migrate`` (config
attributes), ``alembic.ini``'s ``sqlalchemy.url``, or ``OBLIVIATE_DATABASE_URL``."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from core.db.engine import make_engine
from core.db.tables import Base

config = context.config
target_metadata = Base.metadata

# Any constant shared by every process that migrates this database.
ADVISORY_LOCK_KEY = 0x0B11_71A7E

if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from core.settings import get_settings

        url = get_settings().database_url
    return url


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several API processes may start at once: one migrates, the others wait here
            # and then find the schema at head. Released at commit.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            _check_foreign_keys(connection)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = make_engine(database_url(), pool_size=1)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # A batch migration rebuilds a table (copy, drop the old one, rename); with
                # foreign keys enforced, dropping a table other tables' rows reference
                # fails. The pragma only takes effect outside a transaction.
                _set_foreign_keys(connection, enforced=False)
            try:
                run_migrations(connection)
            finally:
                if sqlite:
                    _set_foreign_keys(connection, enforced=True)
    finally:
        engine.dispose()


def _set_foreign_keys(connection, *, enforced: bool) -> None:
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")
    connection.commit()


def _check_foreign_keys(connection) -> None:
    """What enforcement would have caught while it was off: fail the migration."""
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if violations:
        raise RuntimeError(f"the migration left rows with dangling foreign keys: {violations[:5]}")


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
