"""The object-store copy of a job's resumable run folder (``core.run_folder``), so that a
retry on another host, a resume after a pause, or a job that continues another one
starts from the last evaluation point instead of from scratch.

Each save goes to a fresh prefix, ``jobs/<id>/run/step-<n>/``, and only then does
``jobs/<id>/run/latest.json`` point at it; the previous copy is deleted last. A worker
killed mid-upload leaves the pointer on the previous, complete copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

POINTER = "latest.json"


def run_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/run"


class RunMirror:
    def __init__(self, store: ObjectStore, job_id: str):
        self.store, self.job_id = store, job_id
        self.root = run_prefix(job_id)

    def latest(self) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(f"{self.root}/{POINTER}"))
        except ObjectNotFound:
            return None

    def upload(self, folder: Path, step: int) -> None:
        previous = self.latest()
        prefix = f"{self.root}/step-{step:09d}"
        if previous and previous["prefix"] == prefix:
            prefix += "-again"
        self.store.upload_folder(folder, prefix)
        self.store.put_bytes(
            f"{self.root}/{POINTER}", json.dumps({"step": step, "prefix": prefix}).encode()
        )
        if previous and previous["prefix"] != prefix:
            self.store.delete_prefix(previous["prefix"] + "/")

    def download(self, folder: Path) -> int | None:
        """Fetch the latest saved run into ``folder``; its step, or None if none."""
        latest = self.latest()
        if latest is None:
            return None
        try:
            self.store.download_prefix(latest["prefix"], folder)
        except ObjectNotFound:
            log.warning("run copy %s of job %s is gone", latest["prefix"], self.job_id)
            return None
        return int(latest["step"])

    def delete(self) -> None:
        self.store.delete_prefix(f"{self.root}/")
