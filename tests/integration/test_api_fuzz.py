"""Nothing a client sends produces a 500: random and mutated job bodies (NaN, huge
numbers, NUL bytes, surrogates, wrong types, deep nesting) and random ids and query
strings, on both databases."""

from __future__ import annotations

import copy
import json
import os
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.spec import JobSpec
from tests.fixtures.api import job_body, register_model, upload_dataset

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
