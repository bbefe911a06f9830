"""Dataset uploads: streamed, size-limited, validated record by record, stored."""

from __future__ import annotations

import hashlib
import io
import shutil
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.storage import open_store
from tests.fixtures.api import QA_RECORDS, jsonl, make_settings, read_stored_dataset


def upload(client, content: bytes, filename: str = "forget.jsonl", **form):
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=form)


def error_of(response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


def test_upload_validates_stores_and_lists(client, api_settings, tmp_path):
    content = jsonl(
        [
            {
                "question": "q",
                "answer": "a",
                "paraphrased_answer": "a'",
                "perturbed_answer": ["b", "c"],
            }
        ]
    )
    response = upload(client, content, filename="../../evil/tofu forget.jsonl", name="TOFU 1%")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["object"] == "dataset" and dataset["id"].startswith("ds_")
    assert dataset["name"] == "TOFU 1%" and dataset["filename"] == "tofu_forget.jsonl"
    assert (dataset["format"], dataset["kind"], dataset["record_count"]) == ("jsonl", "qa", 1)
    assert dataset["sha256"] == hashlib.sha256(content).hexdigest()
    assert dataset["size_bytes"] == len(content) and dataset["has_truth_ratio_fields"] is True
    store = open_store(api_settings.storage_url)
    stored = store.get_bytes(f"datasets/{dataset['id']}/tofu_forget.jsonl")
    assert stored.startswith(b"OBLVENC1") and b"question" not in stored  # ciphertext
    assert read_stored_dataset(api_settings, dataset["id"], tmp_path) == content

    csv_id = upload(client, b"prompt,completion\nhi,there\n", filename="r.csv").json()["id"]
    table = pa.table({"text": ["one document", "another"]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    parquet = upload(client, buffer.getvalue(), filename="docs.parquet").json()
    assert (parquet["kind"], parquet["record_count"], parquet["name"]) == (
        "text",
        2,
        "docs.parquet",
    )

    assert client.get(f"/v1/datasets/{csv_id}").json()["kind"] == "completion"
    page = client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in page["data"]] == [parquet["id"], csv_id] and page["has_more"]
    rest = client.get("/v1/datasets", params={"after": page["last_id"]}).json()
    assert [d["id"] for d in rest["data"]] == [dataset["id"]] and not rest["has_more"]
    missing = client.get("/v1/datasets/ds_00000000000000000000000000")
    assert error_of(missing) == (404, "dataset_not_found", "dataset_id")


@pytest.mark.parametrize(
    ("content", "filename", "expected"),
    [
        (jsonl(QA_RECORDS[:2]) + b'\n{"question": "q"}', "f.jsonl", "f.jsonl:3:answer"),
        (b'{"question": "q", "answer": 5}', "f.jsonl", "f.jsonl:1:answer"),
        (b"{not json", "f.jsonl", "f.jsonl:1"),
        (b"", "f.jsonl", "f.jsonl"),
        (b"question,answer\nq,\n", "f.csv", "f.csv:2:answer"),
        (b"not parquet", "f.parquet", "f.parquet"),
        (b"\xff\xfe", "f.jsonl", "f.jsonl:1"),
        (b"{}", "f.txt", "f.txt"),
    ],
)
def test_bad_files_are_rejected_naming_file_line_and_field(client, content, filename, expected):
    status, code, param = error_of(upload(client, content, filename=filename))
    assert (status, param) == (422, expected) and code


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


QA_LINE = b'{"question": "q", "answer": "a"}'
QA_TABLE = {"question": ["q", "q"], "answer": ["a", "a"]}


@pytest.mark.parametrize(
    ("content", "filename", "expected"),
    [
        # Integers longer than int() converts, nesting deeper than the recursion limit.
        (
            QA_LINE + b'\n{"question": "q", "answer": "a", "n": ' + b"9" * 5000 + b"}",
            "f.jsonl",
            "f.jsonl:2",
        ),
        (b"[" + QA_LINE + b', {"n": ' + b"9" * 5000 + b"}]", "f.json", "f.json:1"),
        (b'{"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "f.jsonl", "f.jsonl:1"),
        (b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]", "f.json", "f.json:1"),
        (
            b"question,answer,perturbed_answer\nq,a," + b"[" * 100_000 + b"\n",
            "f.csv",
            "f.csv:2:perturbed_answer",
        ),
        # Column names go into the dataset's row, where Postgres refuses NUL and surrogates.
        (b'{"question": "q", "answer": "a", "a\\u0000b": 1}', "f.jsonl", "f.jsonl:1:a\\x00b"),
        (b'{"question": "q", "answer": "a", "\\ud800": 1}', "f.jsonl", "f.jsonl:1:\\ud800"),
        (b"question,answer,a\x00b\nq,a,x\n", "f.csv", "f.csv:1:a\\x00b"),
        (parquet_bytes(pa.table({**QA_TABLE, "a\x00b": [1, 2]})), "f.parquet", "f.parquet:a\\x00b"),
        # Values pyarrow cannot turn into Python objects.
        (
            parquet_bytes(pa.table({**QA_TABLE, "at": pa.array([0, 2**62], pa.timestamp("ns"))})),
            "f.parquet",
            "f.parquet:2:at",
        ),
        (
            parquet_bytes(pa.table({**QA_TABLE, "day": pa.array([2**31 - 1, 0], pa.date32())})),
            "f.parquet",
            "f.parquet:1:day",
        ),
        (parquet_bytes(pa.table(QA_TABLE))[:-20], "f.parquet", "f.parquet"),
        # A scalar, or an array of scalars, is no record.
        (b"5", "f.json", "f.json:1"),
        (b"[5]", "f.json", "f.json:1"),
    ],
)
def test_hostile_files_are_invalid_data_not_server_errors(client, content, filename, expected):
    assert error_of(upload(client, content, filename=filename)) == (422, "invalid_data", expected)


def test_long_documents_and_headers_in_csv_are_accepted(client):
    document = "word " * 60_000  # 300 kB: over the csv module's default 128 KiB cell limit
    content = f'text,{"h" * 200_000}\n"{document}",x\n'.encode()
    response = upload(client, content, filename="docs.csv")
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "text"
    too_many_cells = upload(client, content + b"a,b,c\n", filename="docs.csv")
    assert error_of(too_many_cells) == (422, "invalid_data", "docs.csv:3")


def test_malformed_uploads(client):
    assert error_of(client.post("/v1/datasets", json={"file": "x"}))[:2] == (
        400,
        "invalid_multipart",
    )
    no_file = client.post("/v1/datasets", files={"other": ("a.jsonl", b"{}")})
    assert error_of(no_file) == (422, "missing_field", "file")
    broken = client.post(
        "/v1/datasets",
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code in (400, 422) and "error" in broken.json()


def test_upload_limit_counts_received_bytes(tmp_path, database_url):
    settings = make_settings(tmp_path / "home", database_url, max_upload_bytes=1000)
    big = jsonl([{"text": "x" * 100}] * 20)  # > 1000 bytes
    with TestClient(create_app(settings)) as client:
        assert upload(client, jsonl([{"text": "small"}])).status_code == 201
        assert error_of(upload(client, big)) == (413, "file_too_large", "file")

        # No Content-Length at all (chunked): the limit still holds.
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.jsonl"\r\n\r\n'
        ).encode()
        chunks = [head] + [big[i : i + 256] for i in range(0, len(big), 256)]
        chunks.append(f"\r\n--{boundary}--\r\n".encode())
        response = client.post(
            "/v1/datasets",
            content=iter(chunks),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert error_of(response) == (413, "file_too_large", "file")
        assert "content-length" not in response.request.headers
        assert list((tmp_path / "home" / "store").rglob("big.jsonl")) == []


def test_upload_to_s3_storage(tmp_path, sqlite_template, s3_server):
    database_url = f"sqlite:///{tmp_path / 'obliviate.db'}"
    shutil.copyfile(sqlite_template, tmp_path / "obliviate.db")
    # The bucket the storage tests use: each new bucket takes SeaweedFS volumes of its own.
    bucket_prefix = f"s3://obliviate-test/{uuid.uuid4().hex}"
    settings = make_settings(
        tmp_path / "home",
        database_url,
        storage_url=bucket_prefix,
        s3_endpoint_url=s3_server,
        s3_region="us-east-1",
    )
    content = jsonl(QA_RECORDS)
    with TestClient(create_app(settings)) as client:
        dataset = upload(client, content).json()
        assert client.get("/readyz").json()["components"]["storage"] == {"status": "ok"}
    store = open_store(bucket_prefix, endpoint_url=s3_server, region="us-east-1")
    assert read_stored_dataset(settings, dataset["id"], tmp_path, store) == content
