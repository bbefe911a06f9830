"""Turn a job's references (dataset ids, model names and URLs) into local files."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import Session

from core.db.datasets import get_dataset
from core.db.model_registry import get_model_by_name
from core.errors import InvalidRequest, NotFound
from core.models.checkpoint import sha256_file
from core.models.loading import fetch_model
from core.pipeline import JobInputs
from core.pipeline_eval import ORACLE_STATS
from core.settings import Settings
from core.spec import JobSpec
from core.storage import ObjectNotFound, ObjectStore


def report_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/report"


def checkpoint_prefix(job_id: str, name: str = "final") -> str:
    return f"jobs/{job_id}/checkpoints/{name}"


class InputResolver:
    def __init__(self, session: Session, settings: Settings, store: ObjectStore):
        self.session, self.settings, self.store = session, settings, store
        self.names: dict[str, str] = {}

    def registry_lookup(self, name: str) -> str | None:
        try:
            return get_model_by_name(self.session, name).source
        except NotFound:
            return None

    def dataset(self, dataset_id: str | None, role: str) -> Path | None:
        if dataset_id is None:
            return None
        row = get_dataset(self.session, dataset_id)
        path = self.settings.cache_dir / "datasets" / row.id / row.filename
        if not path.is_file() or sha256_file(path) != row.sha256:
            self.store.download_file(row.storage_key, path)
        self.names[role] = row.filename
        return path

    def model(self, reference: str, param: str) -> str:
        return fetch_model(reference, self.settings, lookup=self.registry_lookup, param=param)

    def oracle_result(self, job_id: str) -> dict:
        try:
            return json.loads(self.store.get_bytes(f"{report_prefix(job_id)}/{ORACLE_STATS}"))
        except ObjectNotFound:
            raise InvalidRequest(
                f"job {job_id} has no stored oracle evaluation; give the oracle as a model",
                param="evaluation.oracle",
                code="oracle_not_found",
            ) from None

    def resolve(self, spec: JobSpec, job) -> JobInputs:
        evaluation = spec.evaluation
        oracle_model = oracle_result = None
        if evaluation.enabled and evaluation.oracle:
            if evaluation.oracle.startswith("job:"):
                oracle_result = self.oracle_result(evaluation.oracle.removeprefix("job:"))
            else:
                oracle_model = self.model(evaluation.oracle, "evaluation.oracle")
        utility = {}
        for index, ref in enumerate(evaluation.utility):
            path = self.dataset(ref, f"utility{index}")
            utility[path.stem] = path
        inputs = JobInputs(
            model=self.model(spec.model, "model"),
            forget=self.dataset(job.forget_dataset_id, "forget"),
            retain=self.dataset(job.retain_dataset_id, "retain"),
            eval_forget=self.dataset(evaluation.forget, "eval_forget"),
            eval_retain=self.dataset(evaluation.retain, "eval_retain"),
            holdout=self.dataset(evaluation.holdout, "holdout"),
            utility=utility,
            knowmem_forget=self.dataset(evaluation.knowmem_forget, "knowmem_forget"),
            knowmem_retain=self.dataset(evaluation.knowmem_retain, "knowmem_retain"),
            oracle_model=oracle_model,
            oracle_result=oracle_result,
        )
        inputs.names = {**self.names, "job": job.id}
        return inputs
