"""Progress from a running job to the database, in batches, off the training thread.

The training loop calls ``step``/``event`` (cheap: append to a buffer) and
``should_cancel``/``should_pause`` (read a flag) every step, and ``evaluation`` at
evaluation points. A background thread wakes every ``OBLIVIATE_HEARTBEAT_INTERVAL_S``
(2 s), records a heartbeat with the job's progress and estimated finish, and reads back
the job's status: ``pausing`` raises the pause flag; ``cancelling`` (or anything but
``running``, e.g. reaped, or claimed again by another attempt) raises the cancel flag.
Then it writes the buffered metrics, events and evaluation points.

The heartbeat has a transaction of its own: liveness must not depend on a batch of
metrics being insertable, or one bad row would get a healthy job reaped. A batch that
still fails after ``BATCH_TRIES`` flushes is dropped (and logged) for the same reason.
Every write is fenced by the claim's attempt number, so a worker reaped while alive
never writes into the next attempt's run.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from core.db.evaluations import add_evaluation
from core.db.jobs import add_events, add_metrics, heartbeat, hold_job

log = logging.getLogger(__name__)

_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Flushes a batch of metrics and events gets before it is dropped.
BATCH_TRIES = 3


class DbReporter:
    def __init__(
        self, sessions, job_id: str, *, attempt: int | None = None, interval_s: float = 1.0
    ):
        self.sessions = sessions
        self.job_id = job_id
        #: the claim's attempt number: the fencing token of every write
        self.attempt = attempt
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._events: list[dict] = []
        self._metrics: list[dict] = []
        self._evaluations: list[dict] = []
        self._failed_tries = 0
        #: written with each heartbeat once a step was trained; until then (and in the
        #: process that launched a job's ranks, where rank 0 reports) only liveness
        self._progress = {
            "step": None,
            "total_steps": None,
            "epoch": None,
            "trained_tokens": None,
            "estimated_finish": None,
        }
        self._cancel = threading.Event()
        self._pause = threading.Event()
        self._stop = threading.Event()
        #: called with (folder, step) when the pipeline saved a resumable state
        self.on_state_saved = None
        # The thread logs with the job's context (job id, attempt) bound by the runner.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._loop,),
            name=f"reporter-{job_id}",
            daemon=True,
        )
        #: the status last read back; None once another attempt holds the job
        self.status: str | None = "running"

    # -- called from the training thread -------------------------------------------------
    def event(self, kind: str, message: str, level: str = "info", **data) -> None:
        """Record an event; it is also a log line (one per phase, restart, warning)."""
        log.log(
            _LOG_LEVELS.get(level, logging.INFO),
            "%s: %s",
            kind,
            message,
            extra={"event": kind, "data": data or None},
        )
        with self._lock:
            self._events.append(
                {
                    "type": kind,
                    "message": message,
                    "level": level,
                    "data": data or None,
                    "created_at": datetime.now(timezone.utc),
                }
            )

    def step(self, metrics) -> None:
        eta = None
        if metrics.step and metrics.elapsed_s > 0:
            remaining = (metrics.total_steps - metrics.step) * metrics.elapsed_s / metrics.step
            eta = datetime.now(timezone.utc) + timedelta(seconds=remaining)
        with self._lock:
            self._metrics.append(
                {
                    "step": metrics.step,
                    "epoch": metrics.epoch,
                    "values": metrics.values(),
                    "created_at": datetime.now(timezone.utc),
                }
            )
            self._progress = {
                "step": metrics.step,
                "total_steps": metrics.total_steps,
                "epoch": metrics.epoch,
                "trained_tokens": metrics.tokens,
                "estimated_finish": eta,
            }

    def should_cancel(self) -> bool:
        return self._cancel.is_set()

    def should_pause(self) -> bool:
        return self._pause.is_set()

    def evaluation(self, point: dict) -> None:
        with self._lock:
            self._evaluations.append(point)

    def state_saved(self, folder, step: int) -> None:
        """The evaluation point's rows go first (the state refers to them), then the
        state is copied to the object store, on the training thread: the next point
        must not start before this one is safe. It runs on the training thread, so a
        database that is away for a moment gets ``BATCH_TRIES`` flushes, a heartbeat
        interval apart, before the job fails."""
        for tries in range(1, BATCH_TRIES + 1):
            try:
                self.flush()
                break
            except Exception:
                if tries == BATCH_TRIES:
                    raise
                log.warning(
                    "could not record the evaluation point of %s (try %d of %d)",
                    self.job_id,
                    tries,
                    BATCH_TRIES,
                    exc_info=True,
                )
                time.sleep(self.interval_s)
        # A reaped attempt keeps no state: the attempt that replaced it owns the job.
        if self.on_state_saved is not None and self.status in ("running", "pausing"):
            self.on_state_saved(folder, step)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> DbReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write what is left (a failing batch gets its tries)."""
        self._stop.set()
        self._thread.join(timeout=30)
        for _ in range(BATCH_TRIES):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the job must still be finished
                log.exception("could not record the last progress of %s", self.job_id)
            with self._lock:
                if not (self._events or self._metrics or self._evaluations):
                    return

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the job
                log.exception("could not record progress of %s; retrying", self.job_id)

    def flush(self) -> None:
        """Heartbeat (raises if the database cannot be reached), then the batch."""
        with self._lock:
            progress = dict(self._progress)
        with self.sessions() as session:
            self.status = heartbeat(session, self.job_id, attempt=self.attempt, **progress)
        if self.status == "pausing":
            self._pause.set()
        elif self.status != "running":
            self._cancel.set()
        self._write_batch()

    def _write_batch(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            metrics, self._metrics = self._metrics, []
            evaluations, self._evaluations = self._evaluations, []
        if not (events or metrics or evaluations):
            return
        with self.sessions() as session:
            try:
                held = hold_job(session, self.job_id, self.attempt)
                if held:
                    add_metrics(session, self.job_id, metrics)
                    add_events(session, self.job_id, events)
                    for point in evaluations:
                        add_evaluation(session, self.job_id, attempt=self.attempt, **point)
                    session.commit()
            except Exception:
                session.rollback()
                self._failed_tries += 1
                if self._failed_tries < BATCH_TRIES:
                    log.warning(
                        "could not record %d metric rows and %d events of %s (try %d of %d)",
                        len(metrics),
                        len(events),
                        self.job_id,
                        self._failed_tries,
                        BATCH_TRIES,
                        exc_info=True,
                    )
                    with self._lock:  # keep them for the next flush, in order
                        self._events[:0], self._metrics[:0] = events, metrics
                        self._evaluations[:0] = evaluations
                else:
                    log.exception(
                        "dropping %d metric rows and %d events of %s after %d failed tries",
                        len(metrics),
                        len(events),
                        self.job_id,
                        BATCH_TRIES,
                    )
                    self._failed_tries = 0
                return
        self._failed_tries = 0
        if not held:
            log.warning(
                "attempt %s no longer holds job %s; dropping %d metric rows and %d events",
                self.attempt,
                self.job_id,
                len(metrics),
                len(events),
            )
            self._cancel.set()
