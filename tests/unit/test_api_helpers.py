"""Pure helpers of the API: strict JSON bodies, ETags, file names, error mapping."""

from __future__ import annotations

import asyncio
import json
import types
import typing

import pytest
from fastapi.exceptions import RequestValidationError

from api.body import InvalidJSON, first_unstorable, parse_json_object
from api.errors import handle_validation_error
from api.services.datasets import safe_filename
from api.services.jobs import (
    EVALUATION_DATASET_FIELDS,
    EVALUATION_MODEL_FIELDS,
    etag_matches,
)
from core.errors import InvalidRequest
from core.spec import EvaluationSpec


def test_parse_json_object_accepts_objects_only():
    assert parse_json_object(b'{"a": [1, {"b": 2.5}]}') == {"a": [1, {"b": 2.5}]}
    for raw in (b"", b"  ", b"{", b"\xff", b"[" * 50_000, b"1" * 5000):
        with pytest.raises(InvalidJSON):
            parse_json_object(raw)
    with pytest.raises(InvalidRequest) as caught:
        parse_json_object(b'"text"')
    assert caught.value.code == "invalid_body"


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b'{"a": NaN}', "a", "non_finite_value"),
        (b'{"a": {"b": [1, -Infinity]}}', "a.b.1", "non_finite_value"),
        (b'{"a": 1e400}', "a", "non_finite_value"),
        (b'{"a": "x\\u0000"}', "a", "invalid_value"),
        (b'{"a": ["\\udc00"]}', "a.0", "invalid_value"),
        (b'{"k\\u0000": 1}', "k\\x00", "invalid_value"),
    ],
)
def test_unstorable_values_are_named(raw, param, code):
    with pytest.raises(InvalidRequest) as caught:
        parse_json_object(raw)
    assert (caught.value.param, caught.value.code) == (param, code)


def test_first_unstorable_handles_deep_nesting_without_recursion():
    deep: typing.Any = 1.0
    for _ in range(10_000):
        deep = [deep]
    assert first_unstorable({"x": deep}) is None


def test_etag_matching():
    etag = 'W/"123-running-4-0"'
    assert etag_matches(etag, etag)
    assert etag_matches('"123-running-4-0"', etag)  # weak comparison
    assert etag_matches('W/"other", W/"123-running-4-0"', etag)
    assert etag_matches("*", etag)
    assert not etag_matches(None, etag) and not etag_matches('W/"124-running-4-0"', etag)


def test_safe_filename_keeps_the_name_and_drops_folders():
    assert safe_filename("C:\\data\\tofu forget.jsonl") == "tofu_forget.jsonl"
    assert safe_filename("../../.hidden.csv") == "hidden.csv"
    assert safe_filename("naïve.parquet") == "na_ve.parquet"
    with pytest.raises(InvalidRequest):
        safe_filename("../")


def test_every_evaluation_text_field_is_checked_as_a_reference():
    """A new data field in EvaluationSpec must be added to the API's reference checks
    (a field that takes a string among other things, as ``oracle`` a list, too)."""
    text_fields = {
        name
        for name, field in EvaluationSpec.model_fields.items()
        if field.annotation is str
        or (
            typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
            and str in typing.get_args(field.annotation)
        )
    }
    assert text_fields == set(EVALUATION_DATASET_FIELDS) | set(EVALUATION_MODEL_FIELDS)


def test_validation_errors_map_to_field_params():
    errors = [
        {"type": "greater_than_equal", "loc": ("query", "limit"), "msg": "Input should be >= 1"}
    ]
    response = asyncio.run(handle_validation_error(None, RequestValidationError(errors)))
    body = json.loads(response.body)
    assert response.status_code == 422
    assert body == {
        "error": {
            "code": "invalid_value",
            "message": "limit: Input should be >= 1",
            "param": "limit",
        }
    }
    invalid = [{"type": "json_invalid", "loc": ("body", 3), "msg": "bad"}]
    response = asyncio.run(handle_validation_error(None, RequestValidationError(invalid)))
    assert (
        response.status_code == 400 and json.loads(response.body)["error"]["code"] == "invalid_json"
    )
