"""Model references that reach other buckets or the service's own storage: refused at
submission (422 with a code, for jobs and registered models alike), never a bucket
created, nothing downloaded; and the worker's loader, which checks again, within its
limits and leaving no partial cache behind."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from core.errors import ModelLocationError
from core.models.loading import fetch_model
from core.settings import Settings
from core.storage import open_store
from tests.fixtures.api import QA_RECORDS, jsonl
from tests.fixtures.hostile import HOSTILE_STORAGE_BUCKET, MODEL_BUCKET

pytestmark = pytest.mark.usefixtures("s3_server")


@pytest.fixture(scope="module")
def forget_id(hostile_api) -> str:
    response = hostile_api.http.post(
        "/v1/datasets", files={"file": ("forget.jsonl", jsonl(QA_RECORDS))}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def bucket_exists(endpoint: str, bucket: str) -> bool:
    try:
        s3_client(endpoint).head_bucket(Bucket=bucket)
        return True
    except ClientError:
        return False


def own_store(hostile_api) -> str:
    return hostile_api.env["OBLIVIATE_STORAGE_URL"]


def escapes(hostile_api) -> dict[str, str]:
    """Every way out of s3://<model bucket>/allowed that a client might try."""
    own = own_store(hostile_api)
    return {
        "another bucket": f"s3://obliviate-elsewhere-{uuid.uuid4().hex[:8]}/model",
        "the service's storage prefix": own,
        "a folder inside it": f"{own}/jobs/job_x/checkpoints/final",
        "the service's whole bucket": f"s3://{HOSTILE_STORAGE_BUCKET}",
        "a sibling prefix that shares a string prefix": f"s3://{MODEL_BUCKET}/allowed-private/m",
        "dot-dot segments": f"s3://{MODEL_BUCKET}/allowed/../private/m",
        "an empty segment": f"s3://{MODEL_BUCKET}/allowed//m",
        "the parent of the allowed prefix": f"s3://{MODEL_BUCKET}",
    }


def test_escaping_model_references_are_422_at_job_submission(hostile_api, forget_id, s3_server):
    references = escapes(hostile_api)
    for label, reference in references.items():
        response = hostile_api.http.post(
            "/v1/jobs",
            json={
                "model": reference,
                "forget": forget_id,
                "hyperparameters": {"retain_loss": "none"},
            },
        )
        assert response.status_code == 422, (label, response.text)
        error = response.json()["error"]
        assert error["param"] == "model", label
        assert error["code"] in ("model_location_not_allowed", "invalid_model"), label
        # The refusal names what was given, never the configured buckets.
        assert f"{MODEL_BUCKET}/allowed," not in error["message"]
    assert not bucket_exists(s3_server, references["another bucket"][5:].split("/")[0])


def test_escaping_model_references_are_422_at_registration(hostile_api, s3_server):
    for label, reference in escapes(hostile_api).items():
        name = f"m-{uuid.uuid4().hex[:8]}"
        response = hostile_api.http.post("/v1/models", json={"name": name, "source": reference})
        assert response.status_code == 422, (label, response.text)
        assert response.json()["error"]["param"] == "source"
        assert hostile_api.http.get(f"/v1/models/{name}").status_code == 404


def test_an_oracle_reference_is_confined_like_the_model(hostile_api, forget_id):
    response = hostile_api.http.post(
        "/v1/jobs",
        json={
            "model": f"s3://{MODEL_BUCKET}/allowed/base",
            "forget": forget_id,
            "hyperparameters": {"retain_loss": "none"},
            "evaluation": {"oracle": own_store(hostile_api)},
        },
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "evaluation.oracle"


def test_references_inside_the_allowed_prefix_are_accepted(hostile_api, forget_id):
    name = f"m-{uuid.uuid4().hex[:8]}"
    source = f"s3://{MODEL_BUCKET}/allowed/llama"
    created = hostile_api.http.post("/v1/models", json={"name": name, "source": source})
    assert created.status_code == 201, created.text
    job = hostile_api.http.post(
        "/v1/jobs",
        json={"model": name, "forget": forget_id, "hyperparameters": {"retain_loss": "none"}},
    )
    assert job.status_code == 201, job.text


# -- the worker's loader -----------------------------------------------------------------


def worker_settings(tmp_path, hostile_api, **overrides) -> Settings:
    values = {
        "home": tmp_path / "worker-home",
        "database_url": "sqlite://",
        "storage_url": own_store(hostile_api),
        "s3_endpoint_url": hostile_api.env["OBLIVIATE_S3_ENDPOINT_URL"],
        "s3_region": "us-east-1",
        "model_buckets": [hostile_api.env["OBLIVIATE_MODEL_BUCKETS"]],
        "demo_on_start": False,
        **overrides,
    }
    return Settings(_env_file=None, **values)


def put_model_folder(endpoint: str, url: str, files: dict[str, bytes]) -> None:
    store = open_store(url, endpoint_url=endpoint, region="us-east-1", create_bucket=True)
    for name, content in files.items():
        store.put_bytes(name, content)


def cached_models(settings: Settings) -> list[str]:
    folder = settings.cache_dir / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


MODEL_FILES = {"config.json": json.dumps({"model_type": "llama"}).encode(), "w.bin": b"\x00" * 64}


def test_the_loader_refuses_the_services_storage_unless_through_the_registry(
    tmp_path, hostile_api, s3_server
):
    settings = worker_settings(tmp_path, hostile_api)
    own_model = f"{own_store(hostile_api)}/jobs/job_{uuid.uuid4().hex[:8]}/checkpoints/final"
    put_model_folder(s3_server, own_model, MODEL_FILES)

    with pytest.raises(ModelLocationError) as error:
        fetch_model(own_model, settings)
    assert error.value.code == "model_location_not_allowed"
    assert cached_models(settings) == []

    folder = fetch_model("job-output", settings, lookup={"job-output": own_model}.get)
    assert sorted(p.name for p in Path(folder).iterdir()) == [
        ".obliviate-complete",
        "config.json",
        "w.bin",
    ]


def test_the_loader_never_creates_a_bucket(tmp_path, hostile_api, s3_server):
    missing = f"obliviate-missing-{uuid.uuid4().hex[:8]}"
    settings = worker_settings(tmp_path, hostile_api, model_buckets=[f"s3://{missing}"])
    with pytest.raises(ModelLocationError) as error:
        fetch_model(f"s3://{missing}/model", settings)
    assert error.value.code == "model_not_found"
    assert not bucket_exists(s3_server, missing)
    assert cached_models(settings) == []


def test_a_prefix_over_the_file_or_byte_limit_is_refused_before_any_download(
    tmp_path, hostile_api, s3_server
):
    prefix = f"s3://{MODEL_BUCKET}/allowed/big-{uuid.uuid4().hex[:8]}"
    put_model_folder(s3_server, prefix, {**MODEL_FILES, "extra.bin": b"\x00" * 4096})
    for overrides, code in (
        ({"max_model_files": 2}, "too_many_model_files"),
        ({"max_model_bytes": 1024}, "model_too_large"),
    ):
        settings = worker_settings(tmp_path, hostile_api, **overrides)
        with pytest.raises(ModelLocationError) as error:
            fetch_model(prefix, settings)
        assert error.value.code == code
        assert cached_models(settings) == []


def test_a_folder_without_a_config_is_a_coded_user_error_not_an_internal_one(
    tmp_path, hostile_api, s3_server
):
    prefix = f"s3://{MODEL_BUCKET}/allowed/not-a-model-{uuid.uuid4().hex[:8]}"
    put_model_folder(s3_server, prefix, {"notes.txt": b"hello"})
    settings = worker_settings(tmp_path, hostile_api)
    with pytest.raises(ModelLocationError) as error:
        fetch_model(prefix, settings)
    assert (error.value.code, error.value.param) == ("invalid_model_folder", "model")
    assert str(settings.home) not in error.value.message
    assert cached_models(settings) == []
