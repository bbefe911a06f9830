"""``obliviate audit verify``: recompute the audit log's hash chain and check its signed
checkpoints on the service's database directly (a management command: the server need
not run)."""

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
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check that no audit entry was edited, removed or moved, and that every signed
    checkpoint of the chain's head verifies and matches the chain
    (OBLIVIATE_DATABASE_URL, or the embedded database under OBLIVIATE_HOME): exit 0
    when all hold, 1 naming the first entry or checkpoint that does not."""
    from dataclasses import asdict

    from core import audit_checkpoints
    from core.certificates import load_public_key
    from core.db import make_engine, make_session_factory
    from core.settings import get_settings

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
    try:
        with make_session_factory(engine)() as session:
            result = audit_checkpoints.verify_log(
                session, audit_checkpoints.public_keys_of(*keys), kept
            )
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(asdict(result)))
    elif result.valid:
        console.print(
            f"[green]OK[/] {result.entries} audit entries, head {result.head_hash}, "
            f"{result.checkpoints} signed checkpoints"
        )
    else:
        if result.checkpoint_id is not None:
            where = f"checkpoint {result.checkpoint_id}"
        elif result.entry_id is not None:
            where = f"entry {result.entry_id}"
        else:
            where = "the head"
        console.print(
            f"[red]FAILED[/] after {result.entries} good entries and {result.checkpoints} "
            f"good checkpoints, {where}: {result.problem}"
        )
    raise typer.Exit(0 if result.valid else 1)


def _service_public_key(path: Path | None):
    """The public half of the service's signing key, if the file is here (never made)."""
    if path is None or not path.exists():
        return None
    from core.certificates import load_or_create_private_key

    return load_or_create_private_key(path).public_key()
