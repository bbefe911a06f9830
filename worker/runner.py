"""Run one job: claim it, run the pipeline, publish the checkpoint and report, finish.

A job runs at most once at a time: the claim is one conditional UPDATE, so a message
delivered twice finds the job no longer ``queued`` and returns. The claim's attempt
number fences every later write: if the reaper gave the job to another attempt while
this one still ran (its heartbeats stalled), this one's writes match no row, and it
stops without publishing or finishing. Whatever goes wrong ends the job ``failed`` with
an error code the user can act on; a checkpoint row exists only once its manifest is
stored.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import traceback

from core.db.artifacts import add_checkpoint, save_report
from core.db.deletion_batches import record_member_evidence
from core.db.evaluations import mark_checkpoints
from core.db.jobs import (
    add_events,
    claim_job,
    finish_job,
    hold_job,
    mark_paused,
    published_output,
    rewind_progress,
)
from core.db.model_registry import register_model
from core.errors import Cancelled, ObliviateError, Paused
from core.logs import bind
from core.models.checkpoint import MANIFEST, sha256_file
from core.regressions import record_regression_checks
from core.run_folder import RUN
from core.settings import Settings, get_settings
from core.spec import JobSpec
from core.storage import ObjectStore
from core.tenancy import bind_tenant, tenant_bound
from worker.inputs import InputResolver, checkpoint_prefix, report_prefix
from worker.reporter import DbReporter
from worker.run_mirror import RunMirror

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(
        self, settings: Settings, sessions, store: ObjectStore, worker_id: str | None = None
    ):
        self.settings, self.sessions, self.store = settings, sessions, store
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def from_settings(cls, worker_id: str | None = None) -> JobRunner:
        from worker.context import object_store, session_factory

        return cls(get_settings(), session_factory(), object_store(), worker_id)

    def run(self, job_id: str) -> str | None:
        """Returns the final status, or None when the job was not ours to run (not
        queued, or taken from this attempt by the reaper meanwhile)."""
        with tenant_bound(None):  # whatever this run binds ends with it
            return self._run(job_id)

    def _run(self, job_id: str) -> str | None:
        with self.sessions() as session:
            job = claim_job(session, job_id, self.worker_id)
        if job is None:
            log.info("job %s is not queued (duplicate message or cancelled); skipping", job_id)
            return None
        attempt = job.attempts
        # Everything the run reads and writes is its tenant's (its models, its audit
        # entries, its webhooks).
        bind_tenant(job.tenant_id)
        bind(job_id=job_id, attempt=attempt, tenant=job.tenant_id)  # on every log line
        if attempt > 1:
            with self.sessions() as session:
                published = published_output(session, job_id)
            if published is not None:
                return self._finish_published(job_id, attempt, published)
        # Per attempt: a reaped attempt still running on this host keeps its own folder.
        workdir = self.settings.cache_dir / "jobs" / job_id / f"attempt-{attempt}"
        shutil.rmtree(workdir, ignore_errors=True)
        reporter = DbReporter(
            self.sessions, job_id, attempt=attempt, interval_s=self.settings.heartbeat_interval_s
        ).start()
        status, error, output_model_id, verdict = "failed", None, None, None
        try:
            output_model_id, verdict = self._execute(job, attempt, workdir, reporter)
            status = "succeeded"
        except Paused as paused:
            reporter.stop()
            with self.sessions() as session:
                step = paused.state.step if paused.state is not None else 0
                ended = (
                    "paused" if mark_paused(session, job_id, attempt=attempt, step=step) else None
                )
            shutil.rmtree(workdir, ignore_errors=True)
            return ended
        except Cancelled:
            status = "cancelled"
        except ObliviateError as exc:
            error = exc.to_dict()
        except Exception as exc:  # noqa: BLE001 - the job must end, whatever broke
            from celery.exceptions import SoftTimeLimitExceeded

            if isinstance(exc, SoftTimeLimitExceeded):
                error = {
                    "code": "time_limit",
                    "message": f"the job ran past {self.settings.job_time_limit_s}s",
                    "param": None,
                }
            else:
                log.exception("job %s crashed", job_id)
                reporter.event(
                    "error",
                    "".join(traceback.format_exception_only(exc)).strip()[:2000],
                    level="error",
                )
                error = {
                    "code": "internal_error",
                    "message": f"{type(exc).__name__}: {exc}"[:1000],
                    "param": None,
                }
        finally:
            reporter.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        with self.sessions() as session:
            ended = finish_job(
                session,
                job_id,
                status,
                error=error,
                output_model_id=output_model_id,
                attempt=attempt,
                verdict=verdict,
            )
        if ended in ("cancelled", "failed"):
            # Nothing will resume it (only a succeeded job can be continued).
            RunMirror(self.store, job_id).delete()
        if ended is None:
            log.warning(
                "attempt %d no longer holds job %s (reaped, or finished elsewhere); "
                "not finishing it",
                attempt,
                job_id,
            )
        return ended

    def _finish_published(self, job_id: str, attempt: int, output_model_id: str) -> str | None:
        """An earlier attempt published the checkpoint and report, then died before
        finishing: the result exists and is complete (one transaction wrote its rows
        after every file), so finish instead of training again."""
        with self.sessions() as session:
            add_events(
                session,
                job_id,
                [
                    {
                        "level": "warning",
                        "type": "restart",
                        "message": f"attempt {attempt}: an earlier attempt already "
                        "published the checkpoint and report; finishing without retraining",
                    }
                ],
            )
            return finish_job(
                session, job_id, "succeeded", output_model_id=output_model_id, attempt=attempt
            )

    def _execute(self, job, attempt: int, workdir, reporter) -> tuple[str, dict | None]:
        from core.pipeline import run_job

        spec = JobSpec.model_validate(job.spec)
        resolver = InputResolver(self.sessions, self.settings, self.store, workdir / "data")
        inputs = resolver.resolve(spec, job)
        resumed_at = self._fetch_run(job, spec, attempt, workdir, reporter)
        mirror = RunMirror(self.store, job.id)
        reporter.on_state_saved = lambda folder, step: mirror.upload(folder, step)
        if spec.resources.gpus > 1:
            from worker.ranks import run_job_in_processes

            outcome = run_job_in_processes(
                self.settings,
                job.id,
                attempt,
                spec,
                inputs,
                workdir,
                resume=resumed_at is not None,
            )
        else:
            outcome = run_job(
                spec,
                inputs,
                workdir,
                reporter=CancelBetweenPhases(reporter),
                lookup=resolver.registry_lookup,
                settings=self.settings,
                resume=resumed_at is not None,
            )
        if reporter.should_cancel():
            raise Cancelled("cancelled after training")
        reporter.event("phase", "uploading checkpoint")
        return self._publish(job, attempt, spec, outcome), outcome.verdict

    def _fetch_run(self, job, spec: JobSpec, attempt: int, workdir, reporter) -> int | None:
        """The saved run to resume from: this job's own (an earlier attempt, a pause), or
        the one ``continue_from`` names. Progress recorded after it is rewound."""
        step = RunMirror(self.store, job.id).download(workdir / RUN)
        source = job.id
        if step is None and spec.continue_from:
            step = RunMirror(self.store, spec.continue_from).download(workdir / RUN)
            source = spec.continue_from
            if step is None:
                raise ObliviateError(
                    f"continue_from: job {spec.continue_from} has no saved run to continue",
                    param="continue_from",
                    code="nothing_to_continue",
                )
        with self.sessions() as session:
            if not rewind_progress(session, job.id, attempt=attempt, step=step or 0):
                raise Cancelled("this attempt no longer holds the job")
        if step is not None:
            how = "continues job " + source if source != job.id else "resumes"
            reporter.event(
                "restart" if source == job.id else "continue",
                f"attempt {attempt} {how} from step {step}",
                step=step,
                source=source,
            )
        elif attempt > 1:
            reporter.event(
                "restart",
                f"attempt {attempt} starts over: no earlier evaluation point was saved",
                level="warning",
            )
        return step

    def _publish(self, job, attempt: int, spec: JobSpec, outcome) -> str:
        prefix = checkpoint_prefix(job.id, attempt)
        last_prefix = checkpoint_prefix(job.id, attempt, "last")
        reports = report_prefix(job.id, attempt)
        # Every upload first: the rows' transaction below holds SQLite's write lock (and
        # the job row's lock on Postgres), which must not wait on the object store.
        self.store.upload_folder(outcome.checkpoint_dir, prefix, last=MANIFEST)
        if outcome.last_checkpoint_dir is not None:
            self.store.upload_folder(outcome.last_checkpoint_dir, last_prefix, last=MANIFEST)
        if outcome.report_dir is not None:
            self.store.upload_folder(outcome.report_dir, reports, last="report.json")
        files = _checkpoint_files(outcome.checkpoint_dir, outcome.manifest)
        summary = (outcome.report or {}).get("summary") or {}
        last = outcome.history[-1].values() if outcome.history else {}
        html = outcome.report_dir is not None and (outcome.report_dir / "report.html").exists()
        with self.sessions() as session:
            # Only a job still running on this attempt publishes: a cancel that arrived
            # meanwhile wins, and a reaped attempt writes nothing into the next one.
            if hold_job(session, job.id, attempt, statuses=("running",)):
                add_checkpoint(
                    session,
                    job.id,
                    "final",
                    outcome.selected_step or outcome.steps,
                    prefix,
                    files,
                    manifest_sha256=files[-1]["sha256"],
                    metrics={**last, **summary},
                )
                names = {outcome.selected_step or outcome.steps: "final"}
                if outcome.last_checkpoint_dir is not None:
                    last_files = _checkpoint_files(
                        outcome.last_checkpoint_dir,
                        json.loads((outcome.last_checkpoint_dir / MANIFEST).read_text()),
                    )
                    add_checkpoint(
                        session,
                        job.id,
                        "last",
                        outcome.last_step,
                        last_prefix,
                        last_files,
                        manifest_sha256=last_files[-1]["sha256"],
                        metrics=last,
                    )
                    names[outcome.last_step] = "last"
                mark_checkpoints(session, job.id, names)
                if outcome.report_dir is not None:
                    save_report(
                        session,
                        job.id,
                        (outcome.report or {}).get("schema_version", 1),
                        summary,
                        json_key=f"{reports}/report.json",
                        html_key=f"{reports}/report.html" if html else None,
                    )
                source = prefix + "/merged" if outcome.manifest.get("merged") else prefix
                record_regression_checks(
                    session, job.id, (outcome.report or {}).get("regressions") or []
                )
                if "requests" in (outcome.report or {}):
                    record_member_evidence(
                        session,
                        job.id,
                        outcome.report["requests"],
                        outcome.report.get("batch_cost"),
                    )
                model = register_model(
                    session,
                    job.id,
                    self.store.uri(source),
                    "job_output",
                    job_id=job.id,
                    description=_output_description(spec),
                )
                session.commit()
                return model.id
        # Outside the transaction: no row points at these files, and none ever will.
        for folder in (prefix, last_prefix, reports):
            self.store.delete_prefix(f"{folder}/")
        raise Cancelled("cancelled before the checkpoint was published")


def _output_description(spec: JobSpec) -> str:
    if spec.kind == "finetune":
        return f"{spec.model} fine-tuned on {spec.train}"
    if spec.method == "guard":
        return f"a guard on {spec.model}: ask for {spec.model}+<this name>"
    return f"{spec.method} unlearning of {spec.model}"


def _checkpoint_files(folder, manifest: dict) -> list[dict]:
    """The manifest's files and the manifest itself, last."""
    return manifest["files"] + [
        {
            "path": MANIFEST,
            "size": (folder / MANIFEST).stat().st_size,
            "sha256": sha256_file(folder / MANIFEST),
        }
    ]


class CancelBetweenPhases:
    """The reporter as the pipeline sees it, with a cancel check at every phase change.
    The training loop checks every step; evaluation and the report (which can take
    longer than training) have no checks of their own, so a cancel that arrives during
    them stops the job at the next phase instead of after all of them."""

    def __init__(self, reporter: DbReporter):
        self.reporter = reporter

    def event(self, kind: str, message: str, level: str = "info", **data) -> None:
        if kind == "phase" and self.reporter.should_cancel():
            raise Cancelled(f"cancelled before {message}")
        self.reporter.event(kind, message, level=level, **data)

    def step(self, metrics) -> None:
        self.reporter.step(metrics)

    def should_cancel(self) -> bool:
        return self.reporter.should_cancel()

    def should_pause(self) -> bool:
        return self.reporter.should_pause()

    def evaluation(self, point: dict) -> None:
        self.reporter.evaluation(point)

    def state_saved(self, folder, step: int) -> None:
        self.reporter.state_saved(folder, step)


__all__ = ["CancelBetweenPhases", "JobRunner"]
