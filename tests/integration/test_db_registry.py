"""Models, checkpoints, reports and ids."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from core.db import artifacts, ids, jobs
from core.db.model_registry import get_model_by_name, list_models, register_model
from core.errors import Conflict, NotFound
from tests.fixtures.api import make_job


def test_register_model_is_idempotent_only_for_its_owner(db_session):
    demo = register_model(db_session, "demo-target", "file:///models/a", "demo")
    again = register_model(db_session, "demo-target", "file:///models/b", "demo")
    db_session.commit()
    assert again.id == demo.id and get_model_by_name(db_session, "demo-target").source.endswith("b")

    register_model(db_session, "llama-base", "org/llama", "registered")
    db_session.commit()
    with pytest.raises(Conflict) as caught:
        register_model(db_session, "llama-base", "org/other", "registered")
    assert caught.value.code == "model_exists"
    with pytest.raises(Conflict):
        register_model(db_session, "demo-target", "org/x", "registered")

    job = make_job(db_session)
    output = register_model(db_session, f"{job.id}-output", "s3://b/x", "job_output", job.id)
    retried = register_model(db_session, f"{job.id}-output", "s3://b/y", "job_output", job.id)
    db_session.commit()
    assert retried.id == output.id

    names = [model.name for model in list_models(db_session, limit=10).items]
    assert names == [f"{job.id}-output", "llama-base", "demo-target"]
    with pytest.raises(NotFound):
        get_model_by_name(db_session, "missing")
    with pytest.raises(ValueError):
        register_model(db_session, "x", "org/x", "mystery")


def test_checkpoints_are_unique_per_job_and_name(db_session):
    job = make_job(db_session)
    files = [{"path": "model.safetensors", "size": 12, "sha256": "a" * 64}]
    checkpoint = artifacts.add_checkpoint(
        db_session, job.id, "final", 10, "jobs/x/checkpoints/final/", files, "b" * 64, {"loss": 0.1}
    )
    db_session.commit()
    assert checkpoint.storage_prefix == "jobs/x/checkpoints/final"
    assert artifacts.get_checkpoint(db_session, job.id, "final").id == checkpoint.id
    assert artifacts.get_checkpoint(db_session, job.id, checkpoint.id).name == "final"
    with pytest.raises(NotFound):
        artifacts.get_checkpoint(db_session, job.id, "missing")
    with pytest.raises(IntegrityError):
        artifacts.add_checkpoint(db_session, job.id, "final", 11, "p", files, "c" * 64)
    db_session.rollback()


def test_save_report_replaces_and_shows_on_the_job(db_session):
    job = make_job(db_session)
    artifacts.save_report(db_session, job.id, 1, {"forget_quality": 0.5}, "k/report.json", None)
    artifacts.save_report(
        db_session,
        job.id,
        "1.1",
        {"forget_quality": float("nan")},
        "k/report.json",
        "k/report.html",
    )
    db_session.commit()
    report = artifacts.get_report(db_session, job.id)
    assert report.schema_version == "1.1" and report.summary == {"forget_quality": None}
    assert jobs.get_job_row(db_session, job.id).report_available


def test_ids_sort_in_creation_order_and_carry_their_time():
    made = [ids.new_id("job") for _ in range(2000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(ids.is_id(value, "job") for value in made)
    assert ids.is_id("ds_demo_forget10", "ds") and not ids.is_id(made[0], "ds")
    assert not any(ids.is_id(bad) for bad in ("job", "job_", "job_a b", "job_\x00", "JOB_x"))
    import time

    assert abs(ids.timestamp_ms(made[-1]) - time.time() * 1000) < 5000
