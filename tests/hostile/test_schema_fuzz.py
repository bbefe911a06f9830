"""The whole OpenAPI document fuzzed by schemathesis with all its checks (and one of
ours) against the API on Postgres and SeaweedFS: examples, coverage (boundaries and
every rule negated), fuzzing and stateful sequences that follow the document's links
from created objects to their routes. Zero failures.

Bounded for CI by ``OBLIVIATE_SCHEMA_FUZZ_EXAMPLES`` (cases per operation, default 10;
well under two minutes here). A longer soak:

    OBLIVIATE_SCHEMA_FUZZ_EXAMPLES=500 OBLIVIATE_SCHEMA_FUZZ_SEED=random \\
        pytest tests/hostile/test_schema_fuzz.py -s

What no schema can state (a dataset id exists, a model location is inside the roots
or buckets, an uploaded file's records are valid) is fed real values through
schemathesis dictionaries, and may otherwise answer 422 only with a code from
``api.openapi.STATE_ERROR_CODES`` (tests/fixtures/schemathesis_hooks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.api import QA_RECORDS, jsonl
from tests.fixtures.hostile import HOSTILE_API_KEY

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("OBLIVIATE_SCHEMA_FUZZ_EXAMPLES", "10"))
SEED = os.environ.get("OBLIVIATE_SCHEMA_FUZZ_SEED", "14")
#: Operations whose acceptance depends on stored state: positive cases may be 422 there
#: (the hooks' state_rules_only check narrows it to the state codes).
STATEFUL_OPERATIONS = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/deletion-requests"),  # its records, model and job settings
    ("POST", "/v1/models"),
    ("POST", "/v1/datasets"),
    ("POST", "/v1/webhooks"),  # DNS, and which addresses are allowed
]

CONFIG = """
# Live streams (SSE) never end by themselves: read the first event, not until timeout.
max-stream-events = 1

[checks]
enabled = true

[dictionaries.datasets]
values = ["{dataset}"]

[dictionaries.models]
values = ["{model}"]

[parameters]
"body.forget" = {{ dictionary = "datasets", probability = 0.8 }}
"body.forget_dataset" = {{ dictionary = "datasets", probability = 0.8 }}
"body.retain" = {{ dictionary = "datasets", probability = 0.8 }}
"body.model" = {{ dictionary = "models", probability = 0.8 }}
"""
# Links come from the document and the Location header only: schemathesis's own
# dependency analysis would also link POST /v1/jobs to the job's report and stored
# files, which exist only once the job has finished (409 report_not_ready until then),
# and the document deliberately does not promise them at creation.
LINKS = """
[phases.stateful.inference]
algorithms = ["location-headers"]
"""
# and a stream that has sent its first event and then only keep-alive comments is
# done for a test's purposes: a short timeout ends the read.
STREAMS = """
[[operations]]
include-path-regex = "/stream$"
request-timeout = 3
"""
OPERATION = """
[[operations]]
include-path = "{path}"
include-method = "{method}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "409", "422"]
"""


def seed_state(api) -> tuple[str, str]:
    records = [
        {**record, "paraphrased_answer": "P.", "perturbed_answer": ["W1.", "W2."]}
        for record in QA_RECORDS
    ]
    dataset = api.http.post("/v1/datasets", files={"file": ("fuzz.jsonl", jsonl(records))})
    assert dataset.status_code == 201, dataset.text
    model = api.http.post("/v1/models", json={"name": "fuzz-base", "source": "org/fuzz-base"})
    assert model.status_code in (201, 409), model.text
    return dataset.json()["id"], "fuzz-base"


def test_the_openapi_document_holds_under_schemathesis_with_all_checks(hostile_api, tmp_path):
    dataset, model = seed_state(hostile_api)
    config = (
        CONFIG.format(dataset=dataset, model=model)
        + LINKS
        + "".join(
            OPERATION.format(method=method, path=path) for method, path in STATEFUL_OPERATIONS
        )
    )
    (tmp_path / "schemathesis.toml").write_text(config)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "tests.fixtures.schemathesis_hooks",
    }
    seed = [] if SEED == "random" else ["--seed", SEED]
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            f"{hostile_api.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {HOSTILE_API_KEY}",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "1",
            "--request-timeout",
            "60",
            # Hypothesis's "generation too slow" check is a timing gate: on a loaded
            # machine POST /v1/jobs's schema (every method's rules) trips it while every
            # generated case passes. The cases are the same without it.
            "--suppress-health-check",
            "too_slow",
            *seed,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = result.stdout + result.stderr
    summary = output[output.rfind("SUMMARY") :] if "SUMMARY" in output else output[-3000:]
    print(summary)
    cases = re.search(r"(\d+) generated", summary)
    assert cases and int(cases.group(1)) > 0, output[-5000:]
    print(f"schemathesis: {cases.group(0)} cases, {EXAMPLES} examples per operation")
    assert result.returncode == 0, output[-20000:]
    assert "failure" not in summary.splitlines()[-1], summary
