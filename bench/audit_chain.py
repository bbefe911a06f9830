"""How long the audit log's hash-chain verification takes (issue 9): ``--entries`` chained
entries (default 1,000,000) of one tenant are written to a temporary Postgres database,
then ``core.db.audit.verify_chain`` for that tenant (what ``GET /v1/audit/verify`` and
``obliviate audit verify --tenant`` run) reads and recomputes them all. Chains are per
tenant, so this is the cost of the largest tenant's check.

    python bench/audit_chain.py                   # 1,000,000 entries
    python bench/audit_chain.py --entries 100000

Not a test: it prints figures (seconds, entries per second). The entries are written
with the chain's own ``entry_hash`` through COPY, the fastest way in; writing them one
``add_audit_entry`` at a time would measure the writer, not the check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TENANT = "bench"
POSTGRES_ADMIN_URL = os.environ.get(
    "OBLIVIATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="rows verify_chain reads at once")
    args = parser.parse_args()

    import json

    import psycopg

    from core.db import make_engine, make_session_factory
    from core.db.audit import GENESIS, entry_hash, verify_chain
    from core.db.migrate import upgrade

    name = f"obliviate_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        upgrade(url.replace("postgresql://", "postgresql+psycopg://", 1))
        started = time.perf_counter()
        at0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        prev = GENESIS
        with psycopg.connect(url) as connection:
            with connection.cursor().copy(
                "COPY audit_log (at, principal, action, object_type, object_id, data, "
                "prev_hash, entry_hash, tenant_id) FROM STDIN"
            ) as copy:
                for i in range(args.entries):
                    fields = {
                        "at": at0 + timedelta(microseconds=i),
                        "principal": "key_bench",
                        "action": "job.submitted",
                        "object_type": "job",
                        "object_id": f"job_{i:026d}",
                        "data": {"method": "simnpo", "i": i},
                    }
                    digest = entry_hash(prev, tenant=TENANT, **fields)
                    copy.write_row(
                        (
                            fields["at"],
                            fields["principal"],
                            fields["action"],
                            fields["object_type"],
                            fields["object_id"],
                            json.dumps(fields["data"]),
                            prev,
                            digest,
                            TENANT,
                        )
                    )
                    prev = digest
            connection.execute(
                "INSERT INTO audit_head (tenant_id, entries, head_hash) VALUES (%s, %s, %s)",
                (TENANT, args.entries, prev),
            )
        written = time.perf_counter() - started
        print(f"wrote {args.entries:,} chained entries in {written:.1f} s", flush=True)

        engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with make_session_factory(engine)() as session:
                started = time.perf_counter()
                result = verify_chain(session, TENANT, batch=args.batch)
                seconds = time.perf_counter() - started
        finally:
            engine.dispose()
        assert result.valid and result.entries == args.entries, result
        print(
            f"verify_chain: {result.entries:,} entries in {seconds:.1f} s "
            f"({result.entries / seconds:,.0f} entries/s), batch {args.batch:,}; "
            f"load {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
