"""``obliviate keys``: API keys on the service's database directly (a management
command: the server need not run, and the first admin key of a tenant comes from here)."""

from __future__ import annotations

from contextlib import contextmanager

import typer

from cli.progress import console

keys_app = typer.Typer(no_args_is_help=True, help="API keys, on the service's database.")


@contextmanager
def _session():
    from core.db import make_engine, make_session_factory
    from core.db.migrate import upgrade
    from core.settings import get_settings

    url = get_settings().database_url
    upgrade(url)  # a service that never started has no tables yet
    engine = make_engine(url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


@keys_app.command("create")
def create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant (made if new)."),
    role: str = typer.Option(..., "--role", help="admin, submitter, viewer or auditor."),
    name: str = typer.Option(None, "--name", help="What the key is for."),
) -> None:
    """Make a key and print it, alone, on the last line (shown only now: the service
    keeps its sha256). Send it as 'Authorization: Bearer KEY'."""
    from core.db import keys as repo
    from core.db.audit import add_audit_entry
    from core.errors import ObliviateError

    with _session() as session:
        try:
            row, secret = repo.create_key(session, tenant=tenant, role=role, name=name)
        except ObliviateError as error:
            console.print(f"[red]error[/] [bold]{error.code}[/]: {error}", highlight=False)
            raise typer.Exit(2) from None
        add_audit_entry(
            session,
            principal="cli",
            action="key.created",
            object_type="api_key",
            object_id=row.id,
            data={"role": row.role, "name": row.name},
            tenant=tenant,
        )
        session.commit()
    console.print(f"created {row.id} ({role} of tenant {tenant}); it is shown only once:")
    print(secret, flush=True)


@keys_app.command("list")
def list_keys(
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant's (default: all)."),
) -> None:
    """The keys (never the keys themselves: their first characters)."""
    from rich.table import Table

    from core.db import keys as repo

    table = Table("id", "tenant", "role", "prefix", "name", "last used", "revoked")
    with _session() as session:
        after = None
        while True:
            page = repo.list_keys(session, tenant, after=after, limit=100)
            for key in page.items:
                table.add_row(
                    key.id,
                    key.tenant_id,
                    key.role,
                    key.prefix + "...",
                    key.name or "",
                    str(key.last_used_at or ""),
                    str(key.revoked_at or ""),
                )
            if not page.has_more:
                break
            after = page.items[-1].id
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id (key_...).")) -> None:
    """Revoke a key: running services refuse it within seconds."""
    from core.db import keys as repo
    from core.db.audit import add_audit_entry
    from core.errors import ObliviateError

    with _session() as session:
        try:
            row, revoked = repo.revoke_key(session, key_id, tenant=None)
        except ObliviateError as error:
            console.print(f"[red]error[/] [bold]{error.code}[/]: {error}", highlight=False)
            raise typer.Exit(2) from None
        if revoked:
            add_audit_entry(
                session,
                principal="cli",
                action="key.revoked",
                object_type="api_key",
                object_id=row.id,
                tenant=row.tenant_id,
            )
        session.commit()
    console.print(f"revoked {row.id} ({row.role} of tenant {row.tenant_id})")
