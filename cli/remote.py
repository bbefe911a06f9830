"""``obliviate jobs|datasets|deletion-requests ...``: the CLI against a running service,
built on ``obliviate_client``. ``OBLIVIATE_URL`` and ``OBLIVIATE_API_KEY`` (or ``--url``,
``--api-key``) say where and who; ``--json`` prints the API's objects for scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cli.progress import console, make_progress, print_next_steps
from obliviate_client import ApiError, Client
from obliviate_client.models import Job, StreamMessage

out = Console()  # stdout: what a script reads

jobs_app = typer.Typer(no_args_is_help=True, help="Unlearning jobs on a running service.")
datasets_app = typer.Typer(no_args_is_help=True, help="Datasets on a running service.")
requests_app = typer.Typer(no_args_is_help=True, help="Deletion requests on a running service.")

UrlOption = typer.Option(
    None, "--url", envvar="OBLIVIATE_URL", help="Service URL (default http://127.0.0.1:8000)."
)
KeyOption = typer.Option(
    None, "--api-key", envvar="OBLIVIATE_API_KEY", help="API key, if the service wants one."
)
JsonOption = typer.Option(False, "--json", help="Print JSON (the API's objects).")


class _Connection:
    url: str | None = None
    api_key: str | None = None


def _connect(url: str | None = UrlOption, api_key: str | None = KeyOption) -> None:
    """Where the service is and who is calling (every subcommand's options)."""
    _Connection.url, _Connection.api_key = url, api_key


for _app in (jobs_app, datasets_app, requests_app):
    _app.callback()(_connect)


def _client() -> Client:
    return Client(_Connection.url, _Connection.api_key)


def _fail(error: Exception) -> None:
    if isinstance(error, ApiError):
        where = f" ({error.param})" if error.param else ""
        console.print(f"[red]error[/] [bold]{error.code}[/]{where}: {error.message}")
    else:
        console.print(f"[red]error[/]: cannot reach the service: {error}")
    raise typer.Exit(code=2)


def _run(action):
    import httpx

    try:
        return action()
    except (ApiError, httpx.HTTPError) as error:
        _fail(error)


def _print_json(value: Any) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    out.print_json(json.dumps(value))


def _read_spec(path: Path) -> dict[str, Any]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        console.print(f"[red]error[/]: cannot read {path}: {error}")
        raise typer.Exit(code=2) from None
    if not isinstance(spec, dict):
        console.print(f"[red]error[/]: {path} must hold a job spec (a mapping)")
        raise typer.Exit(code=2)
    return spec


def _job_line(job: Job) -> str:
    progress = job.progress
    steps = (
        f"{progress.step}/{progress.total_steps}" if progress.total_steps else str(progress.step)
    )
    return f"[bold]{job.id}[/] {job.status} (step {steps}, {job.method} on {job.model})"


def _show_job(job: Job) -> None:
    out.print(_job_line(job))
    if job.error:
        out.print(f"  error [bold]{job.error.code}[/]: {job.error.message}")
    if job.output_model:
        out.print(f"  output model: {job.output_model}")
    if job.report_available:
        out.print(
            f"  report: {_Connection.url or 'http://127.0.0.1:8000'}/v1/jobs/{job.id}/report.html"
        )


def _follow(client: Client, job_id: str) -> Job:
    """The job's stream as a progress bar and its events as log lines."""
    with make_progress() as progress:
        task = progress.add_task(f"{job_id}", total=None, info="queued")

        def update(message: StreamMessage) -> None:
            if message.kind == "job":
                job = message.data
                progress.update(
                    task,
                    total=job.progress.total_steps,
                    completed=job.progress.step,
                    info=job.status,
                )
            elif message.kind == "event":
                event = message.data
                colour = {"warning": "yellow", "error": "red"}.get(event.level, "cyan")
                when = event.created_at.strftime("%H:%M:%S")
                progress.console.print(f"[dim]{when}[/] [{colour}]{event.message}[/]")
            elif message.kind == "metric":
                loss = message.data.values.get("loss")
                if isinstance(loss, (int, float)):
                    progress.update(task, info=f"loss {loss:.4f}")

        return client.jobs.wait(job_id, on_update=update)


def _finish(client: Client, job: Job) -> None:
    _show_job(job)
    if job.report_available:
        summary = client.jobs.report(job.id).get("summary") or {}
        verdict = summary.get("verdict")
        if verdict:
            colour = {"forgotten": "green", "not_forgotten": "red"}.get(verdict["status"], "yellow")
            out.print(f"  verdict: [{colour}]{verdict['status'].replace('_', ' ')}[/]")
            out.print(f"  {verdict['reason']}")
            print_next_steps(out, summary)
    if job.status != "succeeded":
        raise typer.Exit(code=1)


# ----------------------------------------------------------------------- jobs


@jobs_app.command("submit")
def submit(
    spec_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Job spec, YAML or JSON."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the job with a progress bar until it ends."
    ),
    idempotency_key: str = typer.Option(None, help="Makes a repeated submit return the same job."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the job's id."),
    as_json: bool = JsonOption,
):
    """Submit a job; with --wait, follow it live and exit 0 only if it succeeded."""
    client = _client()
    job = _run(lambda: client.jobs.create(_read_spec(spec_file), idempotency_key=idempotency_key))
    if quiet:
        out.print(job.id)
    if not wait:
        if not quiet:
            _print_json(job) if as_json else _show_job(job)
        return
    console.print(f"submitted [bold]{job.id}[/]; following it (Ctrl-C stops watching, not the job)")
    job = _run(lambda: _follow(client, job.id))
    if as_json:
        _print_json(job)
        if job.status != "succeeded":
            raise typer.Exit(code=1)
        return
    _run(lambda: _finish(client, job))


@jobs_app.command("wait")
def wait_for(job_id: str, as_json: bool = JsonOption):
    """Follow a job until it ends."""
    client = _client()
    job = _run(lambda: _follow(client, job_id))
    if as_json:
        _print_json(job)
    else:
        _run(lambda: _finish(client, job))


@jobs_app.command("list")
def list_jobs(
    status: list[str] = typer.Option(None, "--status", help="Repeatable."),
    method: str = typer.Option(None, help="Only this method."),
    limit: int = typer.Option(20, min=1, help="At most this many, newest first."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only their ids."),
    as_json: bool = JsonOption,
):
    """Jobs, newest first."""
    client = _client()

    def fetch():
        found = []
        for job in client.jobs.list(
            status=status or None, method=method, page_size=min(limit, 100)
        ):
            found.append(job)
            if len(found) >= limit:
                break
        return found

    jobs = _run(fetch)
    if quiet:
        for job in jobs:
            out.print(job.id)
        return
    if as_json:
        _print_json(jobs)
        return
    table = Table("job", "status", "progress", "method", "model", "created")
    for job in jobs:
        fraction = job.progress.fraction
        table.add_row(
            job.id,
            job.status,
            f"{fraction:.0%}" if fraction is not None else str(job.progress.step),
            job.method,
            job.model,
            job.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@jobs_app.command("get")
def get_job(job_id: str, as_json: bool = JsonOption):
    """One job's state."""
    job = _run(lambda: _client().jobs.get(job_id))
    _print_json(job) if as_json else _show_job(job)


def _action(job_id: str, action: str, as_json: bool) -> None:
    client = _client()
    job = _run(lambda: getattr(client.jobs, action)(job_id))
    _print_json(job) if as_json else _show_job(job)


@jobs_app.command("cancel")
def cancel(job_id: str, as_json: bool = JsonOption):
    """Cancel a job (queued: at once; running: at its next step)."""
    _action(job_id, "cancel", as_json)


@jobs_app.command("pause")
def pause(job_id: str, as_json: bool = JsonOption):
    """Pause a running job at its next evaluation point."""
    _action(job_id, "pause", as_json)


@jobs_app.command("resume")
def resume(job_id: str, as_json: bool = JsonOption):
    """Resume a paused job."""
    _action(job_id, "resume", as_json)


@jobs_app.command("events")
def events(
    job_id: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events live."),
    as_json: bool = JsonOption,
):
    """A job's events, oldest first."""
    client = _client()

    def show(event) -> None:
        if as_json:
            out.print(event.model_dump_json())
        else:
            out.print(f"{event.created_at:%H:%M:%S} [{event.level}] {event.message}")

    if not follow:
        _run(lambda: [show(event) for event in client.jobs.events(job_id)])
        return

    def stream() -> None:
        for message in client.jobs.stream(job_id):
            if message.kind == "event":
                show(message.data)

    _run(stream)


@jobs_app.command("download")
def download(
    job_id: str,
    folder: Path = typer.Option(Path("ckpt"), "--out", "-o", help="Where to write the files."),
    checkpoint: str = typer.Option("final", help="Checkpoint name or id."),
):
    """Download a checkpoint (save_pretrained layout and manifest.json), checking every
    file's sha256."""
    client = _client()
    written = _run(lambda: client.jobs.download(job_id, folder, checkpoint=checkpoint))
    console.print(f"{len(written)} files in [bold]{folder}[/] (sha256 checked)")


# ----------------------------------------------------------------------- datasets


@datasets_app.command("upload")
def upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL, CSV or Parquet."),
    name: str = typer.Option(None, help="A name for it (default: the file name)."),
    as_json: bool = JsonOption,
):
    """Upload a dataset; prints its id (use it as a job's forget or retain)."""
    dataset = _run(lambda: _client().datasets.upload(path, name=name))
    if as_json:
        _print_json(dataset)
    else:
        out.print(
            f"[bold]{dataset.id}[/] {dataset.name}: {dataset.record_count} {dataset.kind} records"
        )


@datasets_app.command("shred")
def shred(dataset_id: str, as_json: bool = JsonOption):
    """Crypto-shred a dataset: destroy its key and stored file. Its sha256 and record
    count stay; jobs can no longer use it. Idempotent."""
    dataset = _run(lambda: _client().datasets.shred(dataset_id))
    if as_json:
        _print_json(dataset)
    else:
        out.print(
            f"[bold]{dataset.id}[/] shredded at {dataset.shredded_at:%Y-%m-%d %H:%M:%S} UTC; "
            f"kept: sha256 {dataset.sha256}, {dataset.record_count} records"
        )


@datasets_app.command("list")
def list_datasets(as_json: bool = JsonOption):
    """Datasets, newest first."""
    datasets = _run(lambda: list(_client().datasets.list()))
    if as_json:
        _print_json(datasets)
        return
    table = Table("dataset", "name", "records", "kind", "created")
    for dataset in datasets:
        table.add_row(
            dataset.id,
            dataset.name,
            str(dataset.record_count),
            dataset.kind,
            dataset.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


# ----------------------------------------------------------------------- deletion requests


@requests_app.command("create")
def create_request(
    subject: str = typer.Argument(..., help="What is to be forgotten."),
    external_ref: str = typer.Option(None, help="Your reference, e.g. a ticket id."),
    description: str = typer.Option(None, help="More detail."),
    idempotency_key: str = typer.Option(
        None, help="Makes a repeated create return the same request."
    ),
    forget_dataset: str = typer.Option(
        None, help="The subject's records (a dataset id): the service then serves it."
    ),
    model: str = typer.Option(None, help="The model to forget from (with --forget-dataset)."),
    job: Path = typer.Option(
        None,
        help="Job settings (YAML/JSON: a job spec without model and forget; "
        "evaluation.holdout required), with --forget-dataset.",
    ),
    as_json: bool = JsonOption,
):
    """File a deletion request; prints its id (give it to jobs as deletion_request). With
    --forget-dataset, --model and --job the service serves it: it joins the batch of
    requests for the same model and settings (docs/deletion-requests.md)."""
    settings = _read_spec(job) if job is not None else None
    request = _run(
        lambda: _client().deletion_requests.create(
            subject,
            external_ref=external_ref,
            description=description,
            idempotency_key=idempotency_key,
            forget_dataset=forget_dataset,
            model=model,
            job=settings,
        )
    )
    if as_json:
        _print_json(request)
        return
    out.print(f"[bold]{request.id}[/] {request.status}")
    if request.batch is not None:
        out.print(f"  {request.status_reason}")


@requests_app.command("get")
def get_request(request_id: str, as_json: bool = JsonOption):
    """A request's status and the evidence of the jobs that served it."""
    request = _run(lambda: _client().deletion_requests.get(request_id))
    if as_json:
        _print_json(request)
        return
    out.print(f"[bold]{request.id}[/] {request.status}: {request.subject}")
    if request.status_reason:
        out.print(f"  {request.status_reason}")
    for job in request.jobs:
        evidence = job.evidence
        line = f"  {job.id} {job.status}"
        if evidence is not None:
            line += (
                f" forget probability {evidence.forget_probability_before} -> "
                f"{evidence.forget_probability}, forget quality {evidence.forget_quality}, "
                f"PrivLeak {evidence.privleak}"
            )
        out.print(line)
        check = job.request_check
        if check is not None:
            records = check.get("records") or {}
            out.print(
                f"    this request's {records.get('count', '?')} records: {check['status']}"
                + (f" ({check.get('reason')})" if check.get("reason") else "")
                + (" [small sample]" if check.get("small_sample") else "")
            )
    if request.batch is not None:
        _print_batch(request.batch)


def _print_batch(batch) -> None:
    """A batch's requests, job and what batching saved."""
    out.print(
        f"  batch {batch.id} {batch.status}: {len(batch.requests)} request(s) for "
        f"{batch.model}"
        + (f", job {batch.job_id}" if batch.job_id else f", closes {batch.closes_at}")
    )
    cost = batch.cost
    if cost is not None:
        out.print(
            f"  cost: {cost.requests_served} requests served by one job ({cost.jobs_saved} "
            f"saved); measured {cost.measured_seconds:.1f}s vs an estimated "
            f"{cost.estimated_separate_seconds:.1f}s for separate jobs (saved "
            f"{cost.saved_seconds:.1f}s; {cost.estimate})"
        )


@requests_app.command("batch")
def flush_batches(as_json: bool = JsonOption):
    """Serve the open batches now, without waiting for their windows to close."""
    batches = _run(lambda: _client().deletion_requests.flush_batches())
    if as_json:
        _print_json(batches)
        return
    if not batches:
        out.print("no open batch")
    for batch in batches:
        _print_batch(batch)


@requests_app.command("certificate")
def get_certificate(
    request_id: str,
    output: Path = typer.Option(
        ..., "--output", "-o", help="Where to save the signed certificate (JSON)."
    ),
):
    """Save a fulfilled request's signed certificate; check it with ``obliviate verify``."""
    document = _run(lambda: _client().deletion_requests.certificate(request_id))
    output.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    out.print(f"saved {output} (certificate {document['certificate']['certificate_id']})")


@requests_app.command("list")
def list_requests(
    status: list[str] = typer.Option(None, "--status", help="Repeatable."),
    as_json: bool = JsonOption,
):
    """Deletion requests, newest first."""
    requests = _run(lambda: list(_client().deletion_requests.list(status=status or None)))
    if as_json:
        _print_json(requests)
        return
    table = Table("request", "status", "subject", "reference", "jobs", "batch")
    for request in requests:
        batch = request.batch
        table.add_row(
            request.id,
            request.status,
            request.subject,
            request.external_ref or "",
            str(request.job_count),
            f"{batch.id} ({len(batch.requests)})" if batch is not None else "",
        )
    out.print(table)


__all__ = ["datasets_app", "jobs_app", "requests_app"]
