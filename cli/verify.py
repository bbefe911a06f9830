"""``obliviate verify CERTIFICATE``: check a forgetting certificate offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.progress import console


def verify(
    certificate: Annotated[Path, typer.Argument(help="The certificate (JSON) to check.")],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="The service's key to trust: PEM, raw base64, or the JSON of "
            "/.well-known/obliviate/signing-key. Without it only integrity is checked "
            "(against the key inside the certificate), not who signed.",
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="A downloaded copy of the certified model (the checkpoint folder): "
            "every file's sha256 must match the certificate's model_after.",
        ),
    ] = None,
) -> None:
    """Check a certificate's signature and field digests (and a model's files) offline:
    exit 0 when everything verifies, 1 naming what differs."""
    from core import certificates

    try:
        document = json.loads(certificate.read_text())
    except (OSError, ValueError) as exc:
        console.print(f"[red]error[/] cannot read {certificate}: {exc}")
        raise typer.Exit(2) from None
    trusted = None
    if public_key is not None:
        try:
            trusted = certificates.load_public_key(public_key.read_text())
        except (OSError, ValueError, KeyError) as exc:
            console.print(f"[red]error[/] cannot read the public key {public_key}: {exc}")
            raise typer.Exit(2) from None
    result = certificates.verify(document, trusted)
    problems = list(result.problems)
    if model is not None and result.valid:
        problems += _model_problems(document, model)
    if problems:
        for problem in problems:
            console.print(f"[red]FAILED[/] {problem}")
        raise typer.Exit(1)
    body = document["certificate"]
    console.print(
        f"[green]OK[/] certificate {body.get('certificate_id')} for deletion request "
        f"{body.get('deletion_request', {}).get('id')}: signed by key {result.key_id}"
        + ("" if result.trusted_key else " (the key inside it; pass --public-key to pin it)")
        + f", verdict {body.get('verdict', {}).get('status')}"
        + (f", model files in {model} match" if model is not None else "")
    )


def _model_problems(document: dict, folder: Path) -> list[str]:
    from core.models.checkpoint import list_files

    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    expected = {f["path"]: f["sha256"] for f in document["certificate"]["model_after"]["files"]}
    actual = {f["path"]: f["sha256"] for f in list_files(folder)}
    problems = [
        f"model file {p} is missing"
        for p in sorted(set(expected) - set(actual))
        if p != "manifest.json"
    ]
    problems += [
        f"model file {p} differs (sha256 {actual[p][:12]}..., certified {expected[p][:12]}...)"
        for p in sorted(set(expected) & set(actual))
        if actual[p] != expected[p]
    ]
    return problems
