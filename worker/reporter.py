"""Progress from a running job to the database, in batches, off the training thread.

The training loop calls ``step``/``event`` (cheap: append to a buffer) and
``should_cancel`` (read a flag) every step. A background thread wakes every
``OBLIVIATE_HEARTBEAT_INTERVAL_S`` (2 s),
writes the buffered metrics and events in one transaction, records a heartbeat with
the job's progress and estimated finish, and reads back the job's status: ``cancelling``
(or anything but ``running``, e.g. reaped) raises the cancel flag.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

from core.db.jobs import add_events, add_metrics, heartbeat

log = logging.getLogger(__name__)


class DbReporter:
    def __init__(self, sessions, job_id: str, *, interval_s: float = 1.0):
        self.sessions = sessions
        self.job_id = job_id
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._events: list[dict] = []
        self._metrics: list[dict] = []
        self._progress = {
            "step": 0,
            "total_steps": None,
            "epoch": None,
            "trained_tokens": None,
            "estimated_finish": None,
        }
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"reporter-{job_id}", daemon=True)
        #: the status last read back; not "running" means we no longer own the job
        self.status = "running"

    # -- called from the training thread -------------------------------------------------
    def event(self, kind: str, message: str, level: str = "info", **data) -> None:
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

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> DbReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the job
                log.exception("could not record progress of %s; retrying", self.job_id)

    def flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            metrics, self._metrics = self._metrics, []
            progress = dict(self._progress)
        with self.sessions() as session:
            try:
                add_metrics(session, self.job_id, metrics)
                add_events(session, self.job_id, events)
                session.commit()
            except Exception:
                session.rollback()
                with self._lock:  # keep them for the next attempt, in order
                    self._events[:0], self._metrics[:0] = events, metrics
                raise
            self.status = heartbeat(session, self.job_id, **progress)
        if self.status != "running":
            self._cancel.set()
