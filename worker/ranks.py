"""A job that asks for ``resources: {gpus: N}`` with N > 1 runs in N processes.

The worker child that claimed the job is pinned to a slot of N devices
(``worker.devices``); it launches N ranks (``core.training.distributed``), one per
device, and waits. Every rank resolves the registry, loads the data and the model and
trains its share of each block (holding the whole model under ``resources.strategy``
ddp, a shard of it under fsdp: ``core.training.fsdp``); rank 0 alone reports progress to the database, saves
the resumable state to the object store, evaluates and writes the checkpoint and the
report into the job's work folder. The claiming process keeps the job's heartbeat and
publishes rank 0's outcome as for a one-process job. A rank that crashes or dies fails
the job with ``rank_failed``; rank 0's own errors (a cancel, a pause, a non-finite
loss) end the job as they would in one process.
"""

from __future__ import annotations

from pathlib import Path

from core.pipeline import JobInputs, JobOutcome
from core.settings import Settings
from core.spec import JobSpec


def run_job_in_processes(
    settings: Settings,
    job_id: str,
    attempt: int,
    spec: JobSpec,
    inputs: JobInputs,
    workdir: Path,
    *,
    resume: bool,
) -> JobOutcome:
    from core.training import distributed

    return distributed.run_in_processes(
        spec.resources.gpus,
        _job_rank,
        settings,
        job_id,
        attempt,
        spec,
        inputs,
        workdir,
        resume,
        workdir=workdir,
    )


def _job_rank(
    settings: Settings,
    job_id: str,
    attempt: int,
    spec: JobSpec,
    inputs: JobInputs,
    workdir: Path,
    resume: bool,
) -> JobOutcome | None:
    from core.db import make_engine, make_session_factory
    from core.pipeline import NullReporter, run_job
    from core.storage import store_from_settings
    from core.training import distributed
    from worker.inputs import InputResolver
    from worker.reporter import DbReporter
    from worker.run_mirror import RunMirror
    from worker.runner import CancelBetweenPhases

    sessions = make_session_factory(make_engine(settings.database_url, pool_size=1, pre_ping=True))
    store = store_from_settings(settings)
    lookup = InputResolver(sessions, settings, store, workdir / "data").registry_lookup
    if not distributed.is_main():
        run_job(
            spec,
            inputs,
            workdir,
            reporter=NullReporter(),
            lookup=lookup,
            settings=settings,
            resume=resume,
        )
        return None
    reporter = DbReporter(
        sessions, job_id, attempt=attempt, interval_s=settings.heartbeat_interval_s
    ).start()
    mirror = RunMirror(store, job_id)
    reporter.on_state_saved = lambda folder, step: mirror.upload(folder, step)
    try:
        return run_job(
            spec,
            inputs,
            workdir,
            reporter=CancelBetweenPhases(reporter),
            lookup=lookup,
            settings=settings,
            resume=resume,
        )
    finally:
        reporter.stop()
