"""Nothing a client sends produces a 500: random and mutated job bodies (NaN, huge
numbers, NUL bytes, surrogates, wrong types, deep nesting), random ids and query
strings, and random or mutated dataset files, on both databases."""

from __future__ import annotations

import copy
import io
import json
import os
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.spec import JobSpec
from tests.fixtures.api import QA_RECORDS, job_body, jsonl, register_model, upload_dataset

FUZZ = settings(
    # OBLIVIATE_FUZZ_EXAMPLES=2000 for a longer hunt.
    max_examples=int(os.environ.get("OBLIVIATE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Strings that have broken servers before, mixed into random text.
nasty_text = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "\U0001f4a5", "' OR 1=1 --", "%00", "../../x", "9" * 40, "NaN"]
) | st.text(max_size=20)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | nasty_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
SPEC_PATHS = [(name,) for name in JobSpec.model_fields] + [
    ("hyperparameters", "beta"),
    ("hyperparameters", "learning_rate"),
    ("hyperparameters", "max_steps"),
    ("hyperparameters", "retain_loss"),
    ("evaluation", "oracle"),
    ("evaluation", "utility"),
    ("evaluation", "holdout"),
    ("evaluation", "min_k_fraction"),
    ("lora", "r"),
    ("metadata", "team"),
]


def percent_encoded(text: str) -> str:
    """Any text, unpaired surrogates included, as the bytes a client could send."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def assert_client_error_or_success(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "param"} and error["code"]


def post_raw(client, body) -> None:
    content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    response = client.post(
        "/v1/jobs", content=content, headers={"content-type": "application/json"}
    )
    assert_client_error_or_success(response)


@FUZZ
@given(path=st.sampled_from(SPEC_PATHS), value=json_values, drop=st.booleans())
def test_mutated_job_bodies_never_500(client, path, value, drop):
    if not hasattr(client, "_forget_id"):
        register_model(client)
        client._forget_id = upload_dataset(client)
    body = copy.deepcopy(job_body(client._forget_id))
    target = body
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    if drop:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    post_raw(client, body)


@FUZZ
@given(body=st.dictionaries(st.sampled_from([*JobSpec.model_fields, "x"]), json_values))
def test_random_job_bodies_never_500(client, body):
    post_raw(client, body)


@FUZZ
@given(
    segment=nasty_text,
    params=st.lists(
        st.tuples(
            st.sampled_from(["status", "method", "after", "limit", "updated_after", "metadata.k"]),
            nasty_text,
        ),
        max_size=4,
    ),
)
def test_random_ids_and_queries_never_500(client, segment, params):
    escaped = percent_encoded(segment)
    for url in (f"/v1/jobs/{escaped}", f"/v1/datasets/{escaped}", f"/v1/models/{escaped}"):
        assert_client_error_or_success(client.get(url))
    assert_client_error_or_success(client.post(f"/v1/jobs/{escaped}/cancel"))
    assert_client_error_or_success(client.get(f"/v1/jobs/{escaped}/events"))
    query = "&".join(f"{percent_encoded(name)}={percent_encoded(value)}" for name, value in params)
    assert_client_error_or_success(client.get(f"/v1/jobs?{query}"))
    assert_client_error_or_success(
        client.get(f"/v1/jobs/{escaped}/checkpoints/{escaped}/files/{escaped}")
    )


def _parquet(records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


TOFU_RECORDS = [
    {**record, "paraphrased_answer": "P.", "perturbed_answer": ["W1.", "W2."]}
    for record in QA_RECORDS[:3]
]
VALID_FILES = {
    "forget.jsonl": jsonl(TOFU_RECORDS),
    "forget.json": json.dumps(TOFU_RECORDS, indent=1).encode(),
    "forget.csv": (
        b'question,answer,paraphrased_answer,perturbed_answer\r\nQ1?,A1.,P.,"[""W1.""]"\r\n'
        b'"Q2, quoted?","A2\nover lines",P.,W2.\r\n'
    ),
    "forget.parquet": _parquet(TOFU_RECORDS),
}
# Bytes that have broken parsers before: NUL and surrogates (escaped and raw), a BOM,
# stray quotes and separators, invalid UTF-8, an over-long integer, deep nesting.
nasty_bytes = st.sampled_from(
    [
        b"\x00",
        b"\\u0000",
        b"\\ud800",
        b"\xed\xa0\x80",
        b"\xef\xbb\xbf",
        b'"',
        b",",
        b"\r",
        b"\n",
        b"[",
        b"{}",
        b"\xff\xfe",
        b"9" * 5000,
        b"[" * 5000,
        b"PAR1",
    ]
) | st.binary(max_size=8)


@st.composite
def mutated_files(draw) -> tuple[str, bytes]:
    filename = draw(st.sampled_from(sorted(VALID_FILES)))
    content = bytearray(VALID_FILES[filename])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(content)))
        edit = draw(st.sampled_from(["insert", "overwrite", "delete", "truncate"]))
        if edit == "truncate":
            del content[at:]
        elif edit == "delete":
            del content[at : at + draw(st.integers(1, 16))]
        else:
            fragment = draw(nasty_bytes)
            end = at + len(fragment) if edit == "overwrite" else at
            content[at:end] = fragment
    # The same bytes under another extension: a CSV read as JSON and so on.
    if draw(st.booleans()):
        filename = draw(st.sampled_from(sorted(VALID_FILES)))
    return filename, bytes(content)


random_files = st.tuples(
    st.sampled_from([*sorted(VALID_FILES), "forget.txt", ".jsonl", "forget"]),
    st.binary(max_size=256),
)


@settings(FUZZ, max_examples=int(os.environ.get("OBLIVIATE_FUZZ_EXAMPLES", "50")))
@given(file=mutated_files() | random_files)
def test_random_and_mutated_uploads_never_500(client, file):
    filename, content = file
    response = client.post("/v1/datasets", files={"file": (filename, content)})
    assert_client_error_or_success(response)
