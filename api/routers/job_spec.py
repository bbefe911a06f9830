from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.services import methods

router = APIRouter(prefix="/v1/job-spec", tags=["methods"])


class JobSpecObject(BaseModel):
    object: Literal["job_spec"] = "job_spec"
    #: JSON schema of the body of POST /v1/jobs (and of the CLI's job files)
    json_schema: dict[str, Any]
    #: what an unlearning job aims at when ``target`` is left out
    target_defaults: dict[str, Any]
    #: how the ``auto`` hyperparameters are decided
    auto_rules: dict[str, str]


@router.get("", response_model=JobSpecObject)
async def get_job_spec() -> JobSpecObject:
    """The job spec's schema, the default target (``utility_floor``, ``max_epochs``,
    ``eval_every_steps``, ``forget_threshold``, ``relearning``, ``confirm_points``,
    ``stop_when_met``) and
    the rules of the ``auto`` hyperparameters. Method hyperparameters: GET /v1/methods."""
    return methods.job_spec()
