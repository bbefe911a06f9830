"""The batcher: deletion requests for the same (tenant, model, job settings) that arrive
within ``settings.deletion_batch_window_s`` of the first are served by one job over
the union of their records.

Where it runs: in the reaper thread of every API process (``core.reaper``), each pass,
for the batches whose window closed; at once after a request is filed when the window
is 0; and on ``POST /v1/deletion-requests/batches/flush`` (flush the caller's open batches).
Several processes running it at once is safe: a batch becomes a job through one
conditional UPDATE (``core.db.deletion_batches.claim_batch``), so one of them makes
the job and the others roll back.

The union is a new dataset like any upload: validated, encrypted under a key of its
own, stored. Each request's link to the job records where its records sit in the union
(dataset id, sha256, count, offset), so the job can check them one by one after
training (``core.batch_evidence``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from core.datasets import StoredDataset, fetch_dataset_file, record_dataset, store_dataset_file
from core.db import deletion_batches as repo
from core.db.audit import add_audit_entry
from core.db.jobs import create_job, mark_enqueue_failed
from core.db.tables import Dataset, DeletionBatch
from core.db.types import utcnow
from core.envelope import load_or_create_master_key
from core.queue import enqueue_job
from core.settings import Settings
from core.spec import JobSpec
from core.storage import ObjectStore
from core.tenancy import tenant_bound

log = logging.getLogger(__name__)

#: the principal of the audit entries the batcher writes
BATCHER = "batcher"
#: a dispatch retried this often when requests keep joining while the union is built
MAX_TRIES = 3


def dispatch_due(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    publisher,
    *,
    now=None,
    flush: bool = False,
) -> list[DeletionBatch]:
    """Serve every batch whose window closed (with ``flush``: every open batch of the
    bound tenant). Returns the batches this call dispatched."""
    now = now or utcnow()
    batch_ids = repo.due_batch_ids(session, now=now, flush=flush)
    session.rollback()  # end the read: each dispatch is its own transaction
    dispatched = []
    for batch_id in batch_ids:
        try:
            batch = dispatch_batch(session, store, settings, publisher, batch_id)
        except Exception:  # noqa: BLE001 - one bad batch must not hold up the others
            session.rollback()
            log.exception("could not dispatch deletion batch %s", batch_id)
            continue
        if batch is not None:
            dispatched.append(batch)
    return dispatched


def dispatch_batch(
    session: Session, store: ObjectStore, settings: Settings, publisher, batch_id: str
) -> DeletionBatch | None:
    """Make the one job of a batch, link it to every request, commit, enqueue. None
    when another batcher dispatched it first."""
    batch = session.get(DeletionBatch, batch_id, populate_existing=True)
    if batch is None or batch.status != repo.OPEN:
        session.rollback()
        return None
    with tenant_bound(batch.tenant_id):
        for _ in range(MAX_TRIES):
            members = repo.batch_members(session, batch_id)
            datasets = {m.id: session.get(Dataset, m.forget_dataset_id) for m in members}
            # End the read (a commit keeps the rows loaded; a rollback would expire
            # them): no transaction is held while files are built and stored.
            session.commit()
            union, places = _union(store, settings, batch_id, members, datasets)
            if _dispatch(session, settings, batch_id, members, union, places):
                break
            if union is not None:
                store.delete_prefix(union.storage_key.rsplit("/", 1)[0] + "/")
            batch = session.get(DeletionBatch, batch_id, populate_existing=True)
            if batch is None or batch.status != repo.OPEN:
                session.rollback()
                return None
        else:
            session.rollback()
            return None
        batch = session.get(DeletionBatch, batch_id, populate_existing=True)
        if not enqueue_job(publisher, batch.job_id, batch.job_settings["resources"]["gpus"]):
            mark_enqueue_failed(session, batch.job_id)
        log.info("deletion batch %s: %d request(s), job %s", batch_id, len(members), batch.job_id)
        return batch


def _dispatch(session: Session, settings, batch_id, members, union, places) -> bool:
    """The transaction that turns the batch into a job; False (rolled back) when another
    batcher claimed it, or a request joined since the members were read."""
    batch = session.get(DeletionBatch, batch_id, populate_existing=True)
    if not repo.claim_batch(session, batch_id):
        session.rollback()
        return False
    if [m.id for m in repo.batch_members(session, batch_id)] != [m.id for m in members]:
        session.rollback()
        return False
    if union is not None:
        record_dataset(session, union)
        forget_id = union.dataset_id
    else:
        forget_id = members[0].forget_dataset_id
    spec = JobSpec.model_validate({**batch.job_settings, "model": batch.model, "forget": forget_id})
    job = create_job(session, spec.validated(), forget_id, spec.retain)
    for member in members:
        repo.link_job(session, job.id, member.id, records=places[member.id])
    batch.job_id, batch.union_dataset_id = job.id, forget_id
    add_audit_entry(
        session,
        principal=BATCHER,
        action="job.submitted",
        object_type="job",
        object_id=job.id,
        data={
            "method": spec.method,
            "model": spec.model,
            "kind": spec.kind,
            "forget": forget_id,
            "deletion_batch": batch_id,
            "deletion_requests": [m.id for m in members],
        },
    )
    session.commit()
    return True


def _union(
    store: ObjectStore, settings: Settings, batch_id: str, members, datasets
) -> tuple[StoredDataset | None, dict[str, dict]]:
    """The union of the members' records as a new encrypted dataset (None for a batch of
    one: its own forget set is the union), and each member's place in it."""
    from core.data.records import read_records

    places: dict[str, dict] = {}
    master_key_file = settings.master_key_file
    with tempfile.TemporaryDirectory(prefix="obliviate-batch-") as folder:
        lines: list[str] = []
        for member in members:
            dataset = datasets[member.id]
            places[member.id] = {
                "dataset_id": dataset.id,
                "sha256": dataset.sha256,
                "count": dataset.record_count,
                "offset": len(lines),
            }
            if len(members) == 1:
                break
            path = Path(folder) / member.id / dataset.filename
            path.parent.mkdir()
            fetch_dataset_file(
                store, dataset, path, master_key_file=master_key_file, param="forget_dataset"
            )
            records = read_records(path)
            lines += [json.dumps(_as_row(record, records.kind)) for record in records.records]
        if len(members) == 1:
            return None, places
        union_path = Path(folder) / "union.jsonl"
        union_path.write_text("\n".join(lines) + "\n")
        stored = store_dataset_file(
            store,
            union_path,
            master_key=load_or_create_master_key(master_key_file),
            filename="union.jsonl",
            name=f"deletion batch {batch_id}",
        )
    return stored, places


def _as_row(record, kind: str) -> dict:
    """A record as a JSONL row of its kind (``core.data.records``' field names)."""
    if kind == "text":
        return {**record.meta, "text": record.answer}
    if kind == "completion":
        return {**record.meta, "prompt": record.prompt, "completion": record.answer}
    row = {**record.meta, "question": record.prompt, "answer": record.answer}
    if record.paraphrased_answer:
        row["paraphrased_answer"] = record.paraphrased_answer
    if record.paraphrased_question:
        row["paraphrased_question"] = record.paraphrased_question
    if record.perturbed_answers:
        row["perturbed_answer"] = record.perturbed_answers
    return row
