"""``obliviate audit verify``: recompute the audit log's hash chain on the service's
database directly (a management command: the server need not run)."""

from __future__ import annotations

import json

import typer

from cli.progress import console

audit_app = typer.Typer(no_args_is_help=True, help="The audit log, on the service's database.")


@audit_app.command("verify")
def verify(
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check that no audit entry was edited, removed or moved (OBLIVIATE_DATABASE_URL,
    or the embedded database under OBLIVIATE_HOME): exit 0 when the chain holds, 1
    naming the first entry that does not."""
    from dataclasses import asdict

    from core.db import make_engine, make_session_factory
    from core.db.audit import verify_chain
    from core.settings import get_settings

    engine = make_engine(get_settings().database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            result = verify_chain(session)
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(asdict(result)))
    elif result.valid:
        console.print(f"[green]OK[/] {result.entries} audit entries, head {result.head_hash}")
    else:
        where = f"entry {result.entry_id}" if result.entry_id is not None else "the head"
        console.print(
            f"[red]FAILED[/] after {result.entries} good entries, {where}: {result.problem}"
        )
    raise typer.Exit(0 if result.valid else 1)
