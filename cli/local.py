"""Resolving a job spec's references on the local machine, for the CLI.

The CLI's user is the machine's owner, so local paths are taken as given (the API's
model-root restriction guards a shared service, not a laptop). Relative data paths are
relative to the spec file. Registered names resolve to the demo models and to folders
under ``$OBLIVIATE_HOME/models``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from core.bootstrap import DEMO_DATASET_PREFIX, demo_folder
from core.errors import InvalidRequest
from core.pipeline import JobInputs, OracleInput
from core.settings import Settings
from core.spec import JobSpec


def registered_models(settings: Settings) -> dict[str, Path]:
    models = {}
    demo = demo_folder(settings)
    if (demo / "assets.json").exists():
        models["demo-target"] = demo / "models" / "target"
        models["demo-retrain"] = demo / "models" / "retrain"
    if settings.models_dir.is_dir():
        models.update({p.name: p for p in settings.models_dir.iterdir() if p.is_dir()})
    return models


def resolve_model(reference: str, settings: Settings, base: Path, param: str = "model") -> str:
    models = registered_models(settings)
    if reference in models:
        return str(models[reference])
    parsed = urlparse(reference)
    candidate = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else (base / reference)
    if not parsed.scheme and candidate.is_dir():
        return str(candidate.resolve())
    if parsed.scheme == "file":
        return str(candidate)
    from core.models.loading import fetch_model

    return fetch_model(
        reference,
        settings,
        lookup=lambda name: str(models[name]) if name in models else None,
        param=param,
    )


def resolve_data(reference: str | None, settings: Settings, base: Path, param: str) -> Path | None:
    if reference is None:
        return None
    parsed = urlparse(reference)
    if parsed.scheme == "s3":
        from core.storage import open_store

        store = open_store(
            f"s3://{parsed.netloc}",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
        target = settings.cache_dir / "data" / parsed.netloc / parsed.path.strip("/")
        store.download_file(parsed.path.strip("/"), target)
        return target
    if reference.startswith(DEMO_DATASET_PREFIX):
        # The demo's dataset ids mean the same here as on the service, so one job spec
        # runs in both places.
        path = (
            demo_folder(settings) / "data" / f"{reference.removeprefix(DEMO_DATASET_PREFIX)}.jsonl"
        )
        if not path.is_file():
            raise InvalidRequest(
                f"no demo dataset {reference}; run `obliviate demo` first",
                param=param,
                code="unknown_dataset",
            )
        return path
    if reference.startswith("ds_"):
        raise InvalidRequest(
            "uploaded dataset ids only exist on the service; give the CLI a file path",
            param=param,
            code="unknown_dataset",
        )
    path = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else base / reference
    if not path.is_file():
        raise InvalidRequest(f"no such file: {path}", param=param, code="data_not_found")
    return path.resolve()


def resolve_job_inputs(spec: JobSpec, settings: Settings, base: Path) -> JobInputs:
    evaluation = spec.evaluation
    oracles = []
    for index, reference in enumerate(evaluation.oracles):
        param = evaluation.oracle_param(index)
        if reference.startswith("job:"):
            raise InvalidRequest(
                "job:<id> oracles are stored by the service; give the CLI the oracle model",
                param=param,
            )
        model = resolve_model(reference, settings, base, param=param)
        oracles.append(OracleInput(reference, param, model=model))
    utility = [
        resolve_data(ref, settings, base, f"evaluation.utility.{i}")
        for i, ref in enumerate(evaluation.utility)
    ]

    def data(field: str) -> Path | None:
        return resolve_data(getattr(evaluation, field), settings, base, f"evaluation.{field}")

    return JobInputs(
        model=resolve_model(spec.model, settings, base),
        forget=resolve_data(spec.primary_data, settings, base, spec_data_param(spec)),
        retain=resolve_data(spec.retain, settings, base, "retain"),
        eval_forget=data("forget"),
        eval_retain=data("retain"),
        holdout=data("holdout"),
        utility={path.stem: path for path in utility},
        knowmem_forget=data("knowmem_forget"),
        knowmem_retain=data("knowmem_retain"),
        oracles=oracles,
    )


def spec_data_param(spec) -> str:
    """The field that names the set a job trains on."""
    return "forget" if spec.kind == "unlearn" else "train"


def run_unlearn(spec_file: Path, out: Path, strategy: str | None = None):
    """Run the job of ``spec_file`` in this process and return its ``JobOutcome``
    (``strategy``, when given, replaces the spec's ``resources.strategy``).

    In one rank of several (``--num-processes``, or torchrun / accelerate launch across
    machines) only rank 0 shows progress, writes ``out/metrics.jsonl`` and returns the
    outcome; the other ranks train and return None.
    """
    import yaml

    from cli.progress import CliReporter, make_progress
    from core.pipeline import NullReporter, run_job
    from core.settings import get_settings
    from core.spec import parse_job_spec
    from core.training import distributed

    settings = get_settings()
    raw = yaml.safe_load(spec_file.read_text())
    raw = raw if isinstance(raw, dict) else {}
    if strategy is not None:
        resources = raw.get("resources")
        raw["resources"] = {
            **(resources if isinstance(resources, dict) else {}),
            "strategy": strategy,
        }
    spec = parse_job_spec(raw)
    inputs = resolve_job_inputs(spec, settings, spec_file.parent.resolve())
    if not distributed.is_main():
        run_job(spec, inputs, out, reporter=NullReporter(), settings=settings)
        return None
    with make_progress() as progress:
        reporter = CliReporter(progress, out)
        try:
            return run_job(spec, inputs, out, reporter=reporter, settings=settings)
        finally:
            reporter.close()


def run_unlearn_processes(
    spec_file: Path, out: Path, num_processes: int, strategy: str | None = None
):
    """Run the job of ``spec_file`` in ``num_processes`` data-parallel processes on this
    machine (gloo on CPU, nccl on GPUs, one GPU per process). Rank 0 shows progress,
    evaluates and saves; its ``JobOutcome`` is returned. A rank that dies fails the
    run with ``rank_failed``."""
    from core.training import distributed

    return distributed.run_in_processes(
        num_processes, _unlearn_rank, spec_file, out, strategy, workdir=out
    )


def _unlearn_rank(spec_file: Path, out: Path, strategy: str | None = None):
    """One rank of :func:`run_unlearn_processes`: the ``JobOutcome`` on rank 0."""
    return run_unlearn(spec_file, out, strategy)
