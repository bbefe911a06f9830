"""``obliviate``: build demo assets, run unlearning jobs locally, serve the API, and
drive a running service (``jobs``, ``datasets``, ``deletion-requests``; OBLIVIATE_URL,
OBLIVIATE_API_KEY).

The same job spec (YAML or JSON) drives ``obliviate unlearn``, ``obliviate jobs submit``
and ``POST /v1/jobs``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cli.progress import CliReporter, console, make_progress, print_next_steps

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _add_remote_commands() -> None:
    """``jobs``, ``datasets``, ``deletion-requests``: against a running service."""
    from cli.remote import datasets_app, jobs_app, requests_app

    app.add_typer(jobs_app, name="jobs")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(requests_app, name="deletion-requests")


_add_remote_commands()


def _add_verify_commands() -> None:
    """``verify`` (a certificate, offline) and ``audit verify`` (the log's hash chain)."""
    from cli.audit import audit_app
    from cli.keys import keys_app
    from cli.verify import verify

    app.command(name="verify")(verify)
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")


_add_verify_commands()


def _fail(error) -> None:
    console.print(f"[red]error[/] [bold]{getattr(error, 'code', 'error')}[/]: {error}")
    raise typer.Exit(code=2)


def _phase_reporter(progress):
    """A ``(phase, done, total)`` callback drawing one bar per phase. When the output is
    not a terminal (``make serve > serve.log``) bars would only appear at the end, so
    each phase is also written as lines: when it starts and every 10% of it."""
    tasks: dict[str, int] = {}
    logged: dict[str, int] = {}
    to_log = not progress.console.is_terminal

    def report(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total, info="")
        progress.update(tasks[phase], completed=done)
        if to_log:
            tenth = int(10 * done / total) if total else 0
            if logged.get(phase) != tenth:
                logged[phase] = tenth
                progress.console.print(f"demo: {phase} {10 * tenth}% ({done}/{total})")

    return report


def _install_demo(settings) -> None:
    from core.bootstrap import install_demo
    from core.db import make_engine, make_session_factory
    from core.storage import store_from_settings

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with make_progress() as progress:
            install_demo(
                settings,
                make_session_factory(engine),
                store_from_settings(settings),
                progress=_phase_reporter(progress),
            )
    finally:
        engine.dispose()
    console.print(
        "demo ready: models [bold]demo-target[/] and [bold]demo-retrain[/], datasets "
        "[bold]ds_demo_forget10[/], [bold]ds_demo_retain90[/], [bold]ds_demo_holdout[/], "
        "[bold]ds_demo_world_facts[/] (and forget01/05, retain99/95)"
    )


@app.command()
def demo(
    preset: str = typer.Option(None, help="tiny (tests), demo (the service's, ~1 min) or bench."),
    out: Path | None = typer.Option(
        None, help="Output folder; default $OBLIVIATE_HOME/demo/<preset>."
    ),
    seed: int = typer.Option(0, help="Seed for data and models."),
    force: bool = typer.Option(False, help="Rebuild even if cached."),
    register: bool = typer.Option(
        False,
        help="Also register it with the configured service "
        "(database and object store), e.g. on a docker-compose stack.",
    ),
):
    """Build the offline demo: a fictitious-author QA set, a tokenizer, and the target
    and retrain-oracle models."""
    from core.bootstrap import demo_folder
    from core.demo import build_demo_assets
    from core.settings import get_settings

    settings = get_settings()
    if register:
        from core.db.migrate import upgrade

        settings.demo_preset = preset or settings.demo_preset
        upgrade(settings.database_url)
        _install_demo(settings)
        return
    preset = preset or settings.demo_preset
    out = out or demo_folder(settings, preset)
    with make_progress() as progress:
        assets = build_demo_assets(
            out, preset, seed=seed, progress=_phase_reporter(progress), force=force
        )
    console.print(f"demo assets in [bold]{assets.root}[/]")
    for path in sorted(assets.data.values()):
        console.print(f"  data/{path.name}")
    console.print(f"  target model: {assets.target}\n  retrain oracle: {assets.retrain}")


@app.command()
def unlearn(
    spec_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Job spec, YAML or JSON."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder for checkpoint, metrics and report."
    ),
    num_processes: int = typer.Option(
        1,
        "--num-processes",
        min=1,
        help="Data-parallel processes on this machine: one per GPU (nccl), or CPU "
        "processes (gloo) without GPUs. Same result as 1 at the same effective batch.",
    ),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        help="How the processes share the model: ddp (each holds it whole), fsdp (each "
        "holds a shard of the weights, gradients and optimizer state) or deepspeed (the "
        "same through DeepSpeed ZeRO-3; needs the deepspeed package). Default: the spec's "
        "resources.strategy (ddp).",
    ),
):
    """Run one unlearning job locally, with a progress bar."""
    from cli.local import run_unlearn, run_unlearn_processes
    from core.errors import ObliviateError

    try:
        if num_processes > 1:
            outcome = run_unlearn_processes(spec_file, out, num_processes, strategy)
        else:
            outcome = run_unlearn(spec_file, out, strategy)
    except ObliviateError as error:
        _fail(error)
    if outcome is None:  # not rank 0 of a torchrun / accelerate launch: rank 0 reports
        return
    (out / "manifest.json").write_text(json.dumps(outcome.manifest, indent=2))
    console.print(
        f"checkpoint: [bold]{outcome.checkpoint_dir}[/] ({outcome.steps} steps, "
        f"{outcome.trained_tokens} tokens, {outcome.train_seconds:.1f}s)"
    )
    if outcome.report_dir:
        console.print(f"report: [bold]{outcome.report_dir / 'report.html'}[/]")
        summary = (outcome.report or {}).get("summary") or {}
        _print_verdict(summary)
        for key, value in summary.items():
            if key not in ("verdict", "selection_rule", "next_steps"):
                console.print(f"  {key}: {value}")
    elif outcome.verdict:  # no final evaluation: the published evaluation point's verdict
        _print_verdict(
            {
                "verdict": outcome.verdict,
                "selected_step": outcome.selected_step,
                "target_met": outcome.verdict.get("target_met"),
            }
        )


def _print_verdict(summary: dict) -> None:
    verdict = summary.get("verdict")
    if not verdict:
        return
    colour = {"forgotten": "green", "not_forgotten": "red"}.get(verdict["status"], "yellow")
    console.print(
        f"verdict: [bold {colour}]{verdict['status'].replace('_', ' ')}[/] ({verdict['reason']})"
    )
    if summary.get("selected_step") is not None:
        met = "met" if summary.get("target_met") else "not met"
        console.print(f"target {met}; published the model of step {summary['selected_step']}")
    for check in verdict.get("checks", []):
        mark = {True: "pass", False: "FAIL", None: "n/a"}[check.get("passed")]
        value = check.get("value")
        shown = f"{value:.3g}" if isinstance(value, (int, float)) else "-"
        console.print(f"  [{mark}] {check['label']}: {shown} (threshold {check['threshold']})")
    print_next_steps(console, summary)


@app.command()
def finetune(
    model: str = typer.Argument(..., help="Base model: folder, registered name or hub id."),
    data: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Training set: JSONL, CSV or Parquet."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the checkpoint."),
    learning_rate: str = typer.Option(
        "auto", help="Peak AdamW learning rate, or auto (scaled to the model's width)."
    ),
    epochs: int = typer.Option(3, help="Passes over the data."),
    batch_size: int = typer.Option(8, help="Examples per micro-batch."),
    gradient_accumulation_steps: int = typer.Option(1, help="Micro-batches per step."),
    max_length: int = typer.Option(512, help="Tokens per sequence."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16, fp16 or bf16-pure."),
    prompt_template: str = typer.Option(None, help="Used when there is no chat template."),
    seed: int = typer.Option(0, help="Seed for data order."),
):
    """Fine-tune a model on a data set (answer-token NLL), e.g. to build your own target
    model, or the retrain oracle (the same base and recipe without the forget set); a
    job of kind finetune, run locally: checkpoint with a manifest, and metrics.jsonl.
    The same job runs on the service with POST /v1/jobs {"kind": "finetune", ...}."""
    from cli.local import resolve_job_inputs
    from core.errors import ObliviateError
    from core.pipeline import run_job
    from core.settings import get_settings
    from core.spec import DEFAULT_PROMPT_TEMPLATE, parse_job_spec

    settings = get_settings()
    try:
        rate = learning_rate if learning_rate == "auto" else float(learning_rate)
    except ValueError:
        _fail(ValueError(f"--learning-rate: {learning_rate!r} is neither a number nor auto"))
    try:
        spec = parse_job_spec(
            {
                "kind": "finetune",
                "model": model,
                "train": str(data.resolve()),
                "hyperparameters": {
                    "learning_rate": rate,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "gradient_accumulation_steps": gradient_accumulation_steps,
                    "max_length": max_length,
                    "precision": precision,
                },
                "evaluation": {"enabled": False},
                "target": None,
                "prompt_template": prompt_template or DEFAULT_PROMPT_TEMPLATE,
                "seed": seed,
            }
        )
        inputs = resolve_job_inputs(spec, settings, Path.cwd())
        with make_progress() as progress:
            reporter = CliReporter(progress, out)
            try:
                outcome = run_job(spec, inputs, out, reporter=reporter, settings=settings)
            finally:
                reporter.close()
    except ObliviateError as error:
        _fail(error)
    final = outcome.history[-1].loss if outcome.history else float("nan")
    console.print(
        f"checkpoint: [bold]{outcome.checkpoint_dir}[/] ({outcome.steps} steps, final loss "
        f"{final:.4f}, learning rate {outcome.learning_rate:.3g})"
    )


@app.command()
def guard(
    model: str = typer.Argument(..., help="The model the guard is for: folder or registered name."),
    forget: Path = typer.Argument(..., exists=True, dir_okay=False, help="Forget set."),
    retain: Path = typer.Argument(..., exists=True, dir_okay=False, help="Retain set."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the guard."),
    oracle: str = typer.Option(None, help="A model never trained on the forget set."),
):
    """Build a GUARD (generation-time unlearning): a prompt classifier and the forget
    set's forbidden spans, applied when decoding; the weights stay as they are. Register
    the folder (POST /v1/models) and ask for <model>+<guard name> (docs/inference.md)."""
    from cli.local import registered_models
    from core.errors import ObliviateError
    from core.pipeline_guard import build_guard_folder
    from core.settings import get_settings

    settings = get_settings()
    models = registered_models(settings)
    try:
        manifest = build_guard_folder(
            model,
            forget,
            retain,
            out,
            settings=settings,
            lookup=lambda name: str(models[name]) if name in models else None,
            oracle=oracle,
        )
    except ObliviateError as error:
        _fail(error)
    _print_verdict({"verdict": manifest["verdict"]})
    holdout = manifest["classifier_holdout"]
    console.print(
        f"guard: [bold]{out}[/] ({manifest['spans']} spans; classifier held-out precision "
        f"{holdout.get('precision')}, recall {holdout.get('recall')})"
    )


@app.command()
def methods():
    """List the methods a job may name, what each publishes and its default
    hyperparameters (guard: a decoding-time guard, not new weights)."""
    from rich.markup import escape

    from core.methods import LISTED_METHODS, OUTPUT_DESCRIPTIONS

    for method in LISTED_METHODS.values():
        defaults = method.parse_hyperparameters({}).model_dump()
        console.print(
            f"[bold]{method.name}[/] (output: {method.output}): {escape(method.description)}"
        )
        if method.output != "weights":
            console.print("  " + escape(OUTPUT_DESCRIPTIONS[method.output]))
        console.print("  " + ", ".join(f"{k}={v}" for k, v in defaults.items()))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port."),
    worker: bool = typer.Option(True, help="Also start a worker process (embedded mode)."),
    demo: bool | None = typer.Option(
        None, help="Install the demo model and data (default: OBLIVIATE_DEMO_ON_START)."
    ),
    api_workers: int = typer.Option(1, help="uvicorn worker processes."),
    log_format: str = typer.Option(
        None, help="text or json, for the API and the worker (default OBLIVIATE_LOG_FORMAT)."
    ),
    inference: bool = typer.Option(
        True, help="Also start the model-serving process behind /openai/v1."
    ),
    inference_port: int = typer.Option(None, help="Its port on 127.0.0.1; default --port + 1."),
):
    """Start the service: migrations, demo assets, a worker, the model-serving process
    and the API."""
    import os

    import uvicorn

    from cli.serve import exit_on_sigterm, start_inference, start_worker, stop_worker
    from core.db.migrate import upgrade
    from core.logs import configure_logging
    from core.settings import get_settings

    if log_format is not None:
        if log_format not in ("text", "json"):
            _fail(ValueError(f"--log-format must be text or json, got {log_format!r}"))
        # Through the environment, so uvicorn's workers and the worker process see it too.
        os.environ["OBLIVIATE_LOG_FORMAT"] = log_format
        get_settings.cache_clear()
    if inference:
        inference_port = inference_port or port + 1
        os.environ["OBLIVIATE_INFERENCE_URL"] = f"http://127.0.0.1:{inference_port}"
        get_settings.cache_clear()
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    console.print(
        f"state in [bold]{settings.home}[/] (database {settings.database_url.split('@')[-1]})"
    )
    upgrade(settings.database_url)
    _say_whether_open(settings, host)
    if settings.demo_on_start if demo is None else demo:
        _install_demo(settings)
    exit_on_sigterm()
    process = start_worker(settings) if worker else None
    server = start_inference(settings, inference_port) if inference else None
    try:
        uvicorn.run(
            "api.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=api_workers,
            log_level=settings.log_level.lower(),
            # Logging is ours (core.logs): one line per request from the API's own
            # middleware, with its request id, instead of uvicorn's access log.
            log_config=None,
            access_log=False,
        )
    finally:
        for child in (server, process):
            if child is not None:
                stop_worker(child)


def _say_whether_open(settings, host: str) -> None:
    """With no API key anywhere the API is open: fine on loopback, said loudly elsewhere."""
    if settings.api_keys:
        return
    from core.db import make_engine, make_session_factory
    from core.db.keys import any_live_keys

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            if any_live_keys(session):
                return
    finally:
        engine.dispose()
    style = "yellow" if host in ("127.0.0.1", "localhost", "::1") else "bold red"
    console.print(
        f"[{style}]no API keys: the API is open to anyone who can reach {host}[/]; make "
        "one with [bold]obliviate keys create --tenant NAME --role admin[/] (docs/access.md)"
    )


@app.command(name="inference")
def run_inference(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8001, help="Port (the API's OBLIVIATE_INFERENCE_URL)."),
):
    """Serve registered models for generation (OpenAI-compatible, under /v1): the
    process the API's /openai/v1 forwards to. Loads torch; one per GPU."""
    import uvicorn

    from core.settings import get_settings

    uvicorn.run(
        "core.inference.server:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=get_settings().log_level.lower(),
        log_config=None,
        access_log=False,
    )


@app.command(name="worker")
def run_worker(
    gpus: str = typer.Option(
        None,
        help="Devices this worker owns, e.g. 0,1,2,3 or 0-7 (CUDA indices or GPU UUIDs); "
        "default OBLIVIATE_WORKER_GPUS. Each child process is pinned to one slot of them.",
    ),
    gpus_per_job: int = typer.Option(
        None,
        help="Devices per slot: the size of the jobs this worker serves "
        "(default OBLIVIATE_WORKER_GPUS_PER_JOB, 1).",
    ),
    accept_smaller: bool = typer.Option(
        None,
        "--accept-smaller/--exact-size",
        help="Also run jobs that ask for fewer GPUs than a slot has.",
    ),
    concurrency: int = typer.Option(
        1, help="Jobs at once when no --gpus are given (with --gpus: one per slot)."
    ),
    log_format: str = typer.Option(None, help="text or json (default OBLIVIATE_LOG_FORMAT)."),
):
    """Run a Celery worker (production: OBLIVIATE_BROKER_URL=redis://...). With --gpus,
    one child per GPU slot, each pinned to its devices, listening on the queue of jobs
    of its size."""
    import os

    from pydantic import ValidationError

    from cli.serve import worker_command, worker_environment
    from core.settings import Settings

    overrides = {
        "worker_gpus": gpus,
        "worker_gpus_per_job": gpus_per_job,
        "worker_accept_smaller": accept_smaller,
        "log_format": log_format,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        console.print(f"[red]error[/]: {'.'.join(map(str, error['loc']))}: {error['msg']}")
        raise typer.Exit(code=2) from None
    command = worker_command(settings, concurrency=concurrency)
    os.execve(command[0], command, worker_environment(settings))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="obliviate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
