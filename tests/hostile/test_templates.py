"""``prompt_template`` is text with one placeholder, not a format string: anything but
the literal ``{question}`` in braces is a 422 at submission, and rendering never
reaches fields, attributes or format specs."""

from __future__ import annotations

import pytest

from core.data.templates import TEMPLATE_PATTERN, check_template, render_template
from tests.fixtures.api import job_body, register_model, upload_dataset

REFUSED = {
    "another field": "{question}{foo}",
    "a width spec": "{question:>2000000000}",
    "a conversion": "{question!r}",
    "an attribute": "{question.__class__}",
    "an index": "{question[0]}",
    "a positional field": "{0} {question}",
    "an empty field": "{} {question}",
    "a lone brace": "Q: {question} }",
    "an unclosed brace": "Q: {question",
    "spaces in the braces": "{ question }",
    "no placeholder": "Question:",
    "an escaped placeholder only": "{{question}}",
}
ACCEPTED = {
    "Question: {question}\nAnswer:": "Question: Q?\nAnswer:",
    "{question}{question}": "Q?Q?",
    '{{"q": "{question}"}}': '{"q": "Q?"}',
    "{{{question}}}": "{Q?}",
}


@pytest.fixture
def forget(client):
    register_model(client)
    return upload_dataset(client)


@pytest.mark.parametrize("template", REFUSED.values(), ids=REFUSED.keys())
def test_templates_with_anything_but_the_question_placeholder_are_422(client, forget, template):
    response = client.post("/v1/jobs", json=job_body(forget, prompt_template=template))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "prompt_template")


@pytest.mark.parametrize("template", ACCEPTED, ids=range(len(ACCEPTED)))
def test_valid_templates_are_accepted_and_render_like_format_strings(client, forget, template):
    response = client.post("/v1/jobs", json=job_body(forget, prompt_template=template))
    assert response.status_code == 201, response.text
    assert render_template(template, "Q?") == ACCEPTED[template] == template.format(question="Q?")


def test_the_documented_pattern_is_the_rule():
    import re

    for template in [*REFUSED.values(), *ACCEPTED]:
        valid = True
        try:
            check_template(template)
        except ValueError:
            valid = False
        assert bool(re.fullmatch(TEMPLATE_PATTERN, template)) == valid, template


def test_rendering_a_huge_question_costs_its_length_only():
    question = "x" * 1_000_000
    assert len(render_template("Q: {question} A:", question)) == len(question) + 6
