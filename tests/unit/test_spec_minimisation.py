"""Data minimisation in job specs: a job that serves a deletion request keeps no
generated text in its report unless asked to."""

from core.spec import parse_job_spec

BASE = {
    "model": "demo-target",
    "forget": "ds_demo_forget10",
    "retain": "ds_demo_retain90",
    "method": "simnpo",
}


def test_generations_are_kept_by_default_but_not_for_a_deletion_request():
    assert parse_job_spec(BASE).evaluation.store_generations is True
    serving = parse_job_spec({**BASE, "deletion_request": "dr_01aaaaaaaaaaaaaaaaaaaaaaaa"})
    assert serving.evaluation.store_generations is False
    asked = parse_job_spec(
        {
            **BASE,
            "deletion_request": "dr_01aaaaaaaaaaaaaaaaaaaaaaaa",
            "evaluation": {"store_generations": True},
        }
    )
    assert asked.evaluation.store_generations is True
    assert parse_job_spec(serving.model_dump()).evaluation.store_generations is False
