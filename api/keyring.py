"""The API keys a process accepts: the bootstrap keys of ``OBLIVIATE_API_KEYS`` (admins
of the default tenant) and the keys in the database (``core.db.keys``).

Database keys are looked up by their sha256 and the answer kept for ``ttl_s``, so a
burst of requests costs one query per key, not one per request; a key revoked through
this process is dropped at once, one revoked elsewhere (the CLI, another replica)
stops working within ``ttl_s``. Unknown keys are remembered as unknown for as long,
so guessing costs the database nothing. With no key anywhere the service is open
(the embedded default on loopback); whether any key exists is re-read every
``ttl_s`` too, so the first key made with ``obliviate keys create`` closes it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from api.authz import Caller
from core.db import keys as repo
from core.tenancy import DEFAULT_TENANT

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
#: who calls a service that has no keys at all: the default tenant's admin
OPEN_CALLER = Caller(ANONYMOUS, DEFAULT_TENANT, "admin")


def principal_of(token: str) -> str:
    """A bootstrap key's principal (what audit entries and idempotency keys name): a
    digest, never the key itself."""
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class Keyring:
    def __init__(self, bootstrap_keys: list[str], *, ttl_s: float = 5.0, size: int = 10_000):
        self.bootstrap = {
            repo.hash_key(key): Caller(principal_of(key), DEFAULT_TENANT, "admin")
            for key in bootstrap_keys
        }
        self.ttl_s = ttl_s
        self.size = size
        self._found: dict[str, tuple[float, Caller | None]] = {}
        self._touched: dict[str, float] = {}
        self._open: tuple[float, bool] | None = None

    async def is_open(self, database) -> bool:
        """No key anywhere: every caller is OPEN_CALLER."""
        if self.bootstrap:
            return False
        now = time.monotonic()
        if self._open is None or now - self._open[0] > self.ttl_s:
            live = await database.run(repo.any_live_keys)
            self._open = (now, not live)
        return self._open[1]

    async def caller(self, token: str, database, write_database) -> Caller | None:
        digest = repo.hash_key(token)
        for known, caller in self.bootstrap.items():
            if hmac.compare_digest(known, digest):
                return caller
        now = time.monotonic()
        found = self._found.get(digest)
        if found is None or now - found[0] > self.ttl_s:
            identity = await database.run(repo.identify, digest)
            caller = (
                Caller(identity.key_id, identity.tenant, identity.role, identity.key_id)
                if identity
                else None
            )
            if len(self._found) >= self.size:
                self._found.clear()
            found = self._found[digest] = (now, caller)
        caller = found[1]
        if caller is not None and now - self._touched.get(caller.key_id, -1e9) > 60:
            self._touched[caller.key_id] = now
            try:
                await write_database.run(repo.touch, caller.key_id)
            except Exception:  # noqa: BLE001 - a missed last-used time must not fail the call
                log.warning("could not record the last use of key %s", caller.key_id, exc_info=True)
        return caller

    def forget(self, key_id: str) -> None:
        """Drop a revoked key now."""
        self._found = {
            digest: found
            for digest, found in self._found.items()
            if found[1] is None or found[1].key_id != key_id
        }
        self._open = None
