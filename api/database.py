"""Where the API runs database work: off the event loop, on threads of its own."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

log = logging.getLogger(__name__)


class Database:
    """Runs service functions on threads of its own, one per pooled connection, each
    call with a session of its own.

    The session opens and closes inside that one call, so a connection is never held
    while waiting for a thread, and with as many threads as connections no thread ever
    waits for a connection. (Sessions held across thread-pool hops deadlock once more
    requests are in flight than there are connections: threads blocked on the empty
    pool hold every slot while the requests holding connections wait for one.) A
    dedicated executor also costs less per call than anyio's thread pool, and keeps
    slow non-database work (uploads, object-store reads) from queueing in front of
    status reads. Committing is the service's job; whatever it left open is rolled back
    when the session closes.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        threads: int,
        name: str,
        retry_disconnects: bool = False,
    ):
        self.session_factory = session_factory
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.retry_disconnects = retry_disconnects

    async def run(self, function: Callable[..., T], /, *args, **kwargs) -> T:
        """``retry_disconnects`` (reads only: they can always be repeated): a call that
        failed because its pooled connection was dead (the server restarted, failed
        over or terminated it) runs once more, on a fresh connection; SQLAlchemy has by
        then recycled every connection the pool held. That costs nothing while the
        database is up, where ``pool_pre_ping`` costs a round trip per read."""

        def call() -> T:
            try:
                with self.session_factory() as session:
                    return function(session, *args, **kwargs)
            except DBAPIError as exc:
                if not (self.retry_disconnects and exc.connection_invalidated):
                    raise
                log.warning("database connection lost (%s); retrying on a new one", exc.orig)
            with self.session_factory() as session:
                return function(session, *args, **kwargs)

        # The request's log context (request id, tenant) follows the call to its thread.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.executor, context.run, call)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
