"""The job settings a batched deletion request carries, and when two requests may share
one job.

A request filed with its records (``forget_dataset``), a ``model`` and ``job`` settings
(the job spec without ``model``, ``forget``, ``deletion_request``: method,
hyperparameters, retain, target, evaluation...) is served by the service itself
(``core.deletion_batches``). Requests share a job only when the model and the settings
are equal *after* defaults are filled in (``{}`` and the spelled-out defaults are the
same settings), and their records are of the same kind (question/answer, completion or
text), since one job trains on the union of their records.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import ValidationError

from core.certificates import canonical_json
from core.errors import InvalidRequest
from core.methods.guard_spec import GUARD_METHOD
from core.spec import JobSpec, invalid_request_from

#: what a request names itself, or the batcher fills in; not part of ``job``
FIELDS_OF_THE_REQUEST = ("model", "forget", "deletion_request", "kind", "train", "continue_from")
#: labels, not settings: they do not keep requests apart
IGNORED_FOR_BATCHING = ("metadata",)


def batch_job_spec(model: str, forget: str, job: dict[str, Any]) -> JobSpec:
    """The spec of the job that serves a batch: ``job`` with the request's model and the
    forget set. Raises InvalidRequest naming the field as the request spells it
    (``job.evaluation.holdout``, ``model``)."""
    for name in FIELDS_OF_THE_REQUEST:
        if name in job:
            raise InvalidRequest(
                f"job.{name}: not a job setting of a deletion request"
                + (" (give it as the request's own field)" if name == "model" else ""),
                param=f"job.{name}",
                code="unknown_field",
            )
    evaluation = job.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("store_generations") is None:
        # Data minimisation, as for a job filed with one ``deletion_request`` (which the
        # batch job has not: it links to its requests through the link table): its report
        # keeps no generated text of the records the requests were filed to remove.
        job = {**job, "evaluation": {**evaluation, "store_generations": False}}
    try:
        spec = JobSpec.model_validate({**job, "model": model, "forget": forget})
    except ValidationError as exc:
        raise as_request_error(invalid_request_from(exc)) from None
    try:
        spec = spec.validated()
    except InvalidRequest as exc:
        raise as_request_error(exc) from None
    _check_servable(spec)
    return spec


def as_request_error(error: InvalidRequest) -> InvalidRequest:
    """An error about the batch job's spec, naming the field as a deletion request
    spells it (``forget`` is ``forget_dataset``, a job setting is under ``job.``)."""
    old = error.param or ""
    param = {"model": "model", "forget": "forget_dataset"}.get(old, f"job.{old}" if old else "job")
    message = error.message.removeprefix(f"{old}: ") if old else error.message
    return InvalidRequest(f"{param}: {message}", param=param, code=error.code)


def _check_servable(spec: JobSpec) -> None:
    """What a batch job needs to decide each request by itself: a verdict (evaluation
    with a holdout set) on the request's own records, and new weights."""
    evaluation = spec.evaluation
    if spec.method == GUARD_METHOD:
        raise InvalidRequest(
            "job.method: a guard keeps the data in the weights, so it cannot fulfil a "
            "deletion request; choose an unlearning method",
            param="job.method",
            code="invalid_value",
        )
    if not evaluation.enabled:
        raise InvalidRequest(
            "job.evaluation.enabled: a batched request is fulfilled by the forgetting "
            "verdict, which needs the evaluation",
            param="job.evaluation.enabled",
            code="invalid_value",
        )
    if evaluation.holdout is None:
        raise InvalidRequest(
            "job.evaluation.holdout: missing; the forgetting verdict compares the request's "
            "records with records the model never saw (same form, e.g. the same questions "
            "about people who were never in its data)",
            param="job.evaluation.holdout",
            code="missing_holdout",
        )
    for name in ("forget", "knowmem_forget"):
        if getattr(evaluation, name) is not None:
            raise InvalidRequest(
                f"job.evaluation.{name}: a batched request is evaluated on its own records "
                "(forget_dataset); leave it out",
                param=f"job.evaluation.{name}",
                code="invalid_value",
            )


def job_settings(spec: JobSpec) -> dict[str, Any]:
    """The settings part of a batch job's spec, defaults filled in, as JSON."""
    dumped = spec.model_dump(mode="json")
    for name in (*FIELDS_OF_THE_REQUEST, *IGNORED_FOR_BATCHING):
        dumped.pop(name, None)
    return dumped


def settings_key(model: str, settings: dict[str, Any], records_kind: str) -> str:
    """Requests batch together when this is equal (the tenant is compared apart)."""
    return hashlib.sha256(
        canonical_json({"model": model, "job": settings, "records_kind": records_kind})
    ).hexdigest()
