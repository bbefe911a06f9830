"""Turn a job's references (dataset ids, model names and URLs) into local files; and
where in the object store a job's outputs go.

Every lookup has a short session of its own: a job runs for hours, and a session held
open across it would keep a transaction (a snapshot, locks) open just as long.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.datasets import fetch_dataset_file
from core.db.artifacts import get_report
from core.db.audit import submitter_of
from core.db.datasets import get_dataset
from core.db.model_registry import get_model_by_name
from core.db.tables import DeletionRequest
from core.errors import InvalidRequest, NotFound, ObliviateError
from core.models.checkpoint import sha256_file
from core.models.loading import fetch_model
from core.pipeline import BatchMember, JobInputs, OracleInput
from core.pipeline_eval import ORACLE_STATS
from core.settings import Settings
from core.spec import JobSpec
from core.storage import ObjectNotFound, ObjectStore


def attempt_prefix(job_id: str, attempt: int) -> str:
    """Where an attempt writes. Each has its own prefix: an attempt that was reaped while
    still alive may go on uploading for a while, and must not overwrite (or mix its
    files into) those of the attempt that replaced it. The first attempt, by far the
    most common, keeps the job's own prefix (``jobs/<id>/checkpoints/final``, the layout
    the docs show); a retry writes under ``jobs/<id>/attempt-<n>/``."""
    return f"jobs/{job_id}" if attempt == 1 else f"jobs/{job_id}/attempt-{attempt}"


def report_prefix(job_id: str, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}/report"


def checkpoint_prefix(job_id: str, attempt: int, name: str = "final") -> str:
    return f"{attempt_prefix(job_id, attempt)}/checkpoints/{name}"


class InputResolver:
    """``data_dir``: where datasets are decrypted to. The runner gives the job's own
    working folder, removed when the job ends, so no plaintext copy of a forget set
    outlives its job on a worker's disk (and none survives the set's shredding)."""

    def __init__(self, sessions, settings: Settings, store: ObjectStore, data_dir: Path):
        self.sessions, self.settings, self.store = sessions, settings, store
        self.data_dir = data_dir
        self.names: dict[str, str] = {}

    def registry_lookup(self, name: str) -> str | None:
        with self.sessions() as session:
            try:
                return get_model_by_name(session, name).source
            except NotFound:
                return None

    def dataset(self, dataset_id: str | None, role: str) -> Path | None:
        if dataset_id is None:
            return None
        with self.sessions() as session:  # closed before the download
            row = get_dataset(session, dataset_id)
        path = self.data_dir / row.id / row.filename
        if not path.is_file() or sha256_file(path) != row.sha256:
            fetch_dataset_file(
                self.store, row, path, master_key_file=self.settings.master_key_file, param=role
            )
        self.names[role] = row.filename
        return path

    def model(self, reference: str, param: str) -> str:
        return fetch_model(reference, self.settings, lookup=self.registry_lookup, param=param)

    def oracle_result(self, job_id: str, param: str = "evaluation.oracle") -> dict:
        """The oracle statistics stored next to that job's report (whichever attempt
        wrote it: the report row says where)."""
        with self.sessions() as session:
            report = get_report(session, job_id)
        if report is not None:
            folder = report.json_key.rsplit("/", 1)[0]
            try:
                return json.loads(self.store.get_bytes(f"{folder}/{ORACLE_STATS}"))
            except ObjectNotFound:
                pass
        raise InvalidRequest(
            f"job {job_id} has no stored oracle evaluation; give the oracle as a model",
            param=param,
            code="oracle_not_found",
        )

    def resolve(self, spec: JobSpec, job) -> JobInputs:
        evaluation = spec.evaluation
        oracles = []
        for index, reference in enumerate(evaluation.oracles if evaluation.enabled else []):
            oracle = OracleInput(reference, evaluation.oracle_param(index))
            if reference.startswith("job:"):
                oracle.result = self.oracle_result(reference.removeprefix("job:"), oracle.param)
            else:
                oracle.model = self.model(reference, oracle.param)
            oracles.append(oracle)
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
            oracles=oracles,
        )
        inputs.names = {**self.names, "job": job.id, **self.provenance(job.id, spec)}
        if evaluation.enabled:
            inputs.regressions = self.regression_targets(spec.model, spec.continue_from)
            inputs.batch_members = self.batch_members(job.id)
        return inputs

    def batch_members(self, job_id: str) -> list[BatchMember]:
        """A batch job's deletion requests, each with its own records' file (they are
        checked one by one after training: ``core.batch_evidence``). A file that cannot
        be read leaves that request unchecked, hence not fulfilled; the job goes on."""
        from core.db.deletion_batches import pending_members

        with self.sessions() as session:
            rows = [
                (row.deletion_request_id, dict(row.records))
                for row in pending_members(session, job_id)
            ]
        members = []
        for index, (request_id, records) in enumerate(rows):
            member = BatchMember(request_id, records)
            try:
                member.path = self.dataset(records["dataset_id"], f"request{index}")
            except ObliviateError:
                member.path = None
            members.append(member)
        return members

    def regression_targets(self, base_model: str, continue_from: str | None = None) -> list:
        """The certified requests whose certified model ``base_model`` descends from,
        with their forget and holdout files (``core.regressions``); a set that cannot be
        read any more is reported not checked, not a failed job."""
        from core.regressions import certified_ancestors

        with self.sessions() as session:
            targets = certified_ancestors(session, base_model, continue_from)
        for index, target in enumerate(targets):
            if target.not_checked is not None:
                continue
            try:
                target.paths = {
                    "forget": self.dataset(target.forget_dataset_id, f"regression{index}_forget"),
                    "holdout": self.dataset(
                        target.holdout_dataset_id, f"regression{index}_holdout"
                    ),
                }
            except ObliviateError as error:
                target.not_checked = f"its records could not be read: {error}"
        return targets

    def provenance(self, job_id: str, spec: JobSpec) -> dict[str, str]:
        """What the report says about where the job came from: who submitted it and
        the deletion request it serves."""
        found = {}
        with self.sessions() as session:
            submitter = submitter_of(session, job_id)
            request = (
                session.get(DeletionRequest, spec.deletion_request)
                if spec.deletion_request
                else None
            )
        if submitter is not None:
            found["submitted_by"] = submitter
        if request is not None:
            found["deletion_request"] = request.id
            if request.external_ref:
                found["deletion_request_ref"] = request.external_ref
        return found
