"""Run one job: claim it, run the pipeline, publish the checkpoint and report, finish.

A job runs at most once at a time: the claim is one conditional UPDATE, so a message
delivered twice finds the job no longer ``queued`` and returns. Whatever goes wrong
ends the job ``failed`` with an error code the user can act on; a checkpoint row
exists only once its manifest is stored.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import traceback

from core.db.artifacts import add_checkpoint, save_report
from core.db.jobs import claim_job, finish_job
from core.db.model_registry import register_model
from core.errors import Cancelled, ObliviateError
from core.models.checkpoint import MANIFEST, sha256_file
from core.settings import Settings, get_settings
from core.spec import JobSpec
from core.storage import ObjectStore
from worker.inputs import InputResolver, checkpoint_prefix, report_prefix
from worker.reporter import DbReporter

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(
        self, settings: Settings, sessions, store: ObjectStore, worker_id: str | None = None
    ):
        self.settings, self.sessions, self.store = settings, sessions, store
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def from_settings(cls) -> JobRunner:
        from worker.context import object_store, session_factory

        return cls(get_settings(), session_factory(), object_store())

    def run(self, job_id: str) -> str | None:
        """Returns the final status, or None when the job was not ours to run."""
        with self.sessions() as session:
            job = claim_job(session, job_id, self.worker_id)
        if job is None:
            log.info("job %s is not queued (duplicate message or cancelled); skipping", job_id)
            return None
        workdir = self.settings.cache_dir / "jobs" / job_id
        shutil.rmtree(workdir, ignore_errors=True)
        reporter = DbReporter(
            self.sessions, job_id, interval_s=self.settings.heartbeat_interval_s
        ).start()
        status, error, output_model_id = "failed", None, None
        try:
            output_model_id = self._execute(job, workdir, reporter)
            status = "succeeded"
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
        if reporter.status not in ("running", "cancelling"):
            log.warning(
                "job %s is %s now (reaped or finished elsewhere); not finishing it",
                job_id,
                reporter.status,
            )
            return reporter.status
        with self.sessions() as session:
            finish_job(session, job_id, status, error=error, output_model_id=output_model_id)
        return status

    def _execute(self, job, workdir, reporter) -> str:
        from core.pipeline import run_job

        spec = JobSpec.model_validate(job.spec)
        with self.sessions() as session:
            resolver = InputResolver(session, self.settings, self.store)
            inputs = resolver.resolve(spec, job)
            outcome = run_job(
                spec,
                inputs,
                workdir,
                reporter=reporter,
                lookup=resolver.registry_lookup,
                settings=self.settings,
            )
        if reporter.should_cancel():
            raise Cancelled("cancelled after training")
        reporter.event("phase", "uploading checkpoint")
        return self._publish(job, spec, outcome)

    def _publish(self, job, spec: JobSpec, outcome) -> str:
        prefix = checkpoint_prefix(job.id)
        self.store.upload_folder(outcome.checkpoint_dir, prefix, last=MANIFEST)
        files = outcome.manifest["files"] + [
            {
                "path": MANIFEST,
                "size": (outcome.checkpoint_dir / MANIFEST).stat().st_size,
                "sha256": sha256_file(outcome.checkpoint_dir / MANIFEST),
            }
        ]
        summary = (outcome.report or {}).get("summary") or {}
        last = outcome.history[-1].values() if outcome.history else {}
        with self.sessions() as session:
            add_checkpoint(
                session,
                job.id,
                "final",
                outcome.steps,
                prefix,
                files,
                manifest_sha256=files[-1]["sha256"],
                metrics={**last, **summary},
            )
            if outcome.report_dir is not None:
                self.store.upload_folder(
                    outcome.report_dir, report_prefix(job.id), last="report.json"
                )
                save_report(
                    session,
                    job.id,
                    (outcome.report or {}).get("schema_version", 1),
                    summary,
                    json_key=f"{report_prefix(job.id)}/report.json",
                    html_key=f"{report_prefix(job.id)}/report.html",
                )
            source = prefix + "/merged" if outcome.manifest.get("merged") else prefix
            model = register_model(
                session,
                job.id,
                self.store.uri(source),
                "job_output",
                job_id=job.id,
                description=f"{spec.method} unlearning of {spec.model}",
            )
            session.commit()
            return model.id


__all__ = ["JobRunner"]
