"""``obliviate audit verify``: recompute the audit log's hash chains (one per tenant) and
check their signed checkpoints on the service's database directly (a management
command: the server need not run)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.progress import console

audit_app = typer.Typer(no_args_is_help=True, help="The audit log, on the service's database.")


@audit_app.command("verify")
def verify(
    public_key: list[Path] = typer.Option(
        None,
        "--public-key",
        help="A trusted signing key (PEM, raw base64, or the JSON of "
        "/.well-known/obliviate/signing-key); repeat for keys used before a rotation. "
        "Default: the public half of OBLIVIATE_SIGNING_KEY_FILE.",
    ),
    checkpoints: Path | None = typer.Option(
        None,
        "--checkpoints",
        help="Checkpoints kept outside the service (the JSON of GET "
        "/v1/audit/checkpoints, a page or a list of its items): checked too, which "
        "catches checkpoints deleted from the database.",
    ),
    tenant: str | None = typer.Option(
        None,
        "--tenant",
        help="Check this tenant's chain only. Default: every tenant's, and the legacy "
        "checkpoints signed before per-tenant chains (migration 0013).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check, for every tenant (or --tenant), that no audit entry was edited, removed or
    moved, and that every signed checkpoint of the tenant's head verifies and matches
    its chain (OBLIVIATE_DATABASE_URL, or the embedded database under
    OBLIVIATE_HOME): exit 0 when all hold, 1 naming, per tenant, the first entry or
    checkpoint that does not."""
    from dataclasses import asdict

    from core import audit_checkpoints
    from core.certificates import load_public_key
    from core.db import make_engine, make_session_factory
    from core.settings import get_settings
    from core.tenancy import TENANT_PATTERN

    if tenant is not None and not TENANT_PATTERN.match(tenant):
        console.print(
            f"[red]error:[/] --tenant {tenant!r} is not a tenant id "
            f"(it must match {TENANT_PATTERN.pattern})"
        )
        raise typer.Exit(2)
    settings = get_settings()
    try:
        if public_key:
            keys = [load_public_key(path.read_bytes()) for path in public_key]
        else:
            keys = [_service_public_key(settings.signing_key_file)]
            keys = [key for key in keys if key is not None]
        kept = (
            audit_checkpoints.load_kept(json.loads(checkpoints.read_text()))
            if checkpoints is not None
            else []
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    engine = make_engine(settings.database_url, pool_size=1)
    trusted = audit_checkpoints.public_keys_of(*keys)
    try:
        with make_session_factory(engine)() as session:
            if tenant is None:
                checks = audit_checkpoints.verify_every_tenant(session, trusted, kept)
            else:
                checks = [audit_checkpoints.verify_log(session, trusted, kept, tenant=tenant)]
    finally:
        engine.dispose()
    valid = all(check.valid for check in checks)
    if as_json:
        print(json.dumps({"valid": valid, "chains": [asdict(check) for check in checks]}))
    elif not checks:
        console.print("[green]OK[/] no audit entries")
    else:
        for check in checks:
            console.print(_describe(check))
    raise typer.Exit(0 if valid else 1)


def _describe(check) -> str:
    chain = (
        f"tenant {check.tenant}"
        if check.tenant is not None
        else "legacy service-wide chain (checkpoints signed before migration 0013)"
    )
    if check.valid:
        return (
            f"[green]OK[/] {chain}: {check.entries} audit entries, head {check.head_hash}, "
            f"{check.checkpoints} signed checkpoints"
        )
    if check.checkpoint_id is not None:
        where = f"checkpoint {check.checkpoint_id}"
    elif check.entry_id is not None:
        where = f"entry {check.entry_id}"
    else:
        where = "the head"
    return (
        f"[red]FAILED[/] {chain}: after {check.entries} good entries and "
        f"{check.checkpoints} good checkpoints, {where}: {check.problem}"
    )


def _service_public_key(path: Path | None):
    """The public half of the service's signing key, if the file is here (never made)."""
    if path is None or not path.exists():
        return None
    from core.certificates import load_or_create_private_key

    return load_or_create_private_key(path).public_key()
