"""The smaller findings of the same probe: bodies sent as another media type, server
folders in messages, metadata messages that blame the key for a value, user mistakes
reported as internal errors, loss messages that blame the wrong thing, and a diverged
run ending ``succeeded``."""

from __future__ import annotations

import json
import math

import pytest

from core.errors import Diverged, ModelLocationError
from core.methods import get_method
from core.training.divergence import check_step, divergence, non_finite_message
from tests.fixtures.api import job_body, register_model, upload_dataset


@pytest.fixture
def forget(client):
    register_model(client)
    return upload_dataset(client)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models", "/v1/deletion-requests"])
def test_json_routes_refuse_bodies_sent_as_other_media_types(client, forget, path, content_type):
    """text/plain, form and multipart bodies are what a browser may POST across origins
    without a CORS preflight."""
    body = {
        "/v1/jobs": job_body(forget),
        "/v1/models": {"name": "m", "source": "org/m"},
        "/v1/deletion-requests": {"subject": "s"},
    }[path]
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge+json"]
)
def test_json_media_types_with_parameters_or_suffixes_are_accepted(client, forget, content_type):
    response = client.post(
        "/v1/jobs",
        content=json.dumps(job_body(forget)).encode(),
        headers={"content-type": content_type},
    )
    assert response.status_code == 201, response.text


def test_model_location_errors_do_not_print_server_folders(client, api_settings, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    missing = api_settings.home / "models" / "nothing-here"
    for source in (str(outside), f"file://{outside}", str(missing)):
        response = client.post("/v1/models", json={"name": "m1", "source": source})
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        for root in api_settings.model_roots:
            assert str(root) not in message.replace(source, ""), message


def test_a_metadata_value_error_says_value(client, forget):
    response = client.post("/v1/jobs", json=job_body(forget, metadata={"team": "x" * 513}))
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "value of 'team'" in message and "keys are" not in message
    response = client.get("/v1/jobs", params={"metadata.team": "x" * 513})
    assert "value of 'team'" in response.json()["error"]["message"]
    response = client.post("/v1/jobs", json=job_body(forget, metadata={"bad key": "v"}))
    assert "key 'bad key'" in response.json()["error"]["message"]


def test_an_unloadable_model_folder_is_invalid_model_naming_the_reference(tmp_path):
    from core.models.loading import load_model

    folder = tmp_path / "cache" / "models" / "abc123"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelLocationError) as error:
        load_model(str(folder), reference="s3://models/mine", dtype="fp32")
    assert (error.value.code, error.value.param) == ("invalid_model", "model")
    assert "s3://models/mine" in error.value.message
    assert str(folder) not in error.value.message


# -- loss messages and divergence ---------------------------------------------------------


def hyperparameters(method: str, **values):
    return get_method(method).parse_hyperparameters({"retain_loss": "none", **values})


def test_the_non_finite_message_names_what_the_run_used_and_what_can_cause_it():
    npo = hyperparameters("npo", beta=0.001, precision="fp32", learning_rate=1e-5)
    message = non_finite_message("non-finite loss (nan)", npo, "npo", "no")
    assert "precision fp32" in message and "beta 0.001" in message
    assert "learning_rate 1e-05" in message and "max_grad_norm 1" in message
    assert "check the method's beta" in message
    assert "fp32" not in message.split(":", 1)[1].replace("precision fp32", "")  # no fp32 advice
    bf16 = hyperparameters("ga", precision="bf16", max_grad_norm=None)
    message = non_finite_message("non-finite loss (inf)", bf16, "ga", "bf16")
    assert "precision bf16" in message and "no gradient clipping" in message
    assert "set max_grad_norm" in message and "train in precision fp32" in message


@pytest.mark.parametrize(
    ("first", "step", "diverged"),
    [
        ({"loss": -0.02, "forget_loss": -0.02}, {"loss": -40.8, "forget_loss": -40.8}, False),
        ({"loss": -0.02, "forget_loss": -0.02}, {"loss": -1053.0, "forget_loss": -1053.0}, True),
        ({"loss": -0.02}, {"loss": -1.3e6}, True),  # the run
        ({"loss": 13.9, "forget_loss": 13.9}, {"loss": 1200.0, "forget_loss": 1200.0}, False),
        ({"loss": 13.9, "retain_loss": 0.5}, {"loss": 3.0, "retain_loss": 2000.0}, True),
        ({"loss": 1.0}, {"loss": math.nan}, False),  # non-finite: stopped before, elsewhere
        ({"loss": 1.0, "retain_loss": None}, {"loss": 0.5, "retain_loss": None}, False),
    ],
)
def test_divergence_is_a_loss_term_far_past_its_start_and_past_1000_nats(first, step, diverged):
    assert (divergence(step, first) is not None) == diverged


def test_a_diverged_step_raises_diverged_naming_the_run():
    ga = hyperparameters("ga", learning_rate=1.0, max_grad_norm=None, precision="fp32")
    with pytest.raises(Diverged) as error:
        check_step({"loss": -1.3e6}, {"loss": -0.02}, ga, "ga", "no", step=9)
    assert error.value.code == "diverged"
    assert "step 9" in error.value.message and "learning_rate 1" in error.value.message


def test_learning_rate_1_without_clipping_fails_as_diverged(tiny_demo):
    """The issue's run on the tiny demo: GA at learning rate 1.0 with no clipping reaches
    -1053 nats per token by step 8 (runs at 1e-2 stay above -41)."""
    from core.data.encoding import encode_record_set
    from core.data.records import read_records
    from core.models.loading import load_model
    from core.spec import DEFAULT_PROMPT_TEMPLATE
    from core.training.loop import run_training

    model, tokenizer = load_model(str(tiny_demo.target), dtype="fp32")
    forget = encode_record_set(
        tokenizer,
        read_records(tiny_demo.data["forget10"]),
        max_length=128,
        template=DEFAULT_PROMPT_TEMPLATE,
    )
    ga = hyperparameters(
        "ga",
        learning_rate=1.0,
        max_grad_norm=None,
        epochs=10,
        batch_size=4,
        gradient_accumulation_steps=1,
        precision="fp32",
    )
    with pytest.raises(Diverged) as error:
        run_training(model, tokenizer, forget, None, get_method("ga"), ga)
    assert "no gradient clipping" in error.value.message
