"""Engine and session factory for SQLite (embedded) and Postgres (production)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    autocommit: bool = False,
    pre_ping: bool = False,
    pooled: bool = True,
    echo: bool = False,
) -> Engine:
    """``autocommit=True`` for an engine that only reads: a status read is then one round
    trip (no BEGIN before the SELECT, no ROLLBACK when the connection goes back to the
    pool), and psycopg keeps its prepared statements, which a ROLLBACK discards. Each
    statement sees its own consistent snapshot. A separate engine (and pool) rather
    than an execution option, which would switch autocommit at every checkout.

    ``pre_ping``: test each pooled connection as it is checked out (one round trip) and
    replace it when the server closed it (a restart, a failover, ``pg_terminate_backend``,
    an idle timeout). Engines whose work cannot simply be repeated (writes) want it;
    an engine whose callers retry on a disconnect (``api.database``'s reads) does not
    pay for it. Either way, once one connection is found dead SQLAlchemy recycles every
    connection the pool held before that moment.

    ``pooled=False``: a connection per use, closed after it (``NullPool``), for a
    process that forks (the worker's parent), so no child inherits an open socket."""
    url = make_url(database_url)
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if not pooled:
        from sqlalchemy.pool import NullPool

        pool_options: dict = {"poolclass": NullPool}
    else:
        pool_options = {"pool_pre_ping": pre_ping}
    if url.get_backend_name() == "sqlite":
        pool: dict = {}
        if url.database and url.database != ":memory:":
            from pathlib import Path

            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": pool_size, "max_overflow": 0} if pooled else {}
        engine = create_engine(
            url,
            echo=echo,
            **isolation,
            **pool,
            **pool_options,
            # The API's and the worker's threads share connections.
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg2", ""):
        # One driver everywhere: psycopg 3 (plain postgresql:// would pick psycopg2).
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(
        url,
        echo=echo,
        **isolation,
        # A fixed pool: overflow connections would be opened and closed under every burst,
        # and a new Postgres connection costs milliseconds of CPU on both sides. Callers
        # beyond pool_size wait for one (the API does all of a request's database work in
        # one thread-pool call, so waiting cannot deadlock).
        **({"pool_size": pool_size, "max_overflow": 0, "pool_recycle": 1800} if pooled else {}),
        **pool_options,
    )
    if pre_ping:
        event.listen(engine, "handle_error", _failed_ping_discards_the_connection)
    return engine


def _failed_ping_discards_the_connection(context) -> None:
    """A pre-ping that fails for any reason means the connection must not be used.

    SQLAlchemy replaces a pinged connection only when the error looks like a disconnect
    (for psycopg: the connection is already marked closed). A connection terminated
    while the ping ran can still read as open, mid-query (transaction status ACTIVE);
    then the psycopg dialect's ping fails restoring ``autocommit`` with a
    ``ProgrammingError`` ("can't change 'autocommit' now") that would reach the caller,
    and fail a training job over a connection the pool could simply have replaced."""
    if context.is_pre_ping:
        context.is_disconnect = True


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers (API) proceed while a writer (worker) commits; busy_timeout makes
    # concurrent writers wait instead of failing at once; SQLite leaves foreign keys off
    # unless asked, per connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: services return them to be serialized.
    return sessionmaker(engine, expire_on_commit=False)
