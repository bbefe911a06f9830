"""The OpenAPI document: it states every rule the server enforces, so a client (or
schemathesis, tests/hostile/test_schema_fuzz.py) can tell a valid request from an
invalid one without sending it.

Bodies the routes parse themselves (strict JSON, streamed multipart) are described
here, plus what FastAPI cannot derive from the models:

- a job's ``hyperparameters`` follow its ``method``: one variant per registered method
  (``oneOf``), each with that method's schema and its cross-field rules (a retain term
  needs a ``retain`` set; something must be trained);
- no text in a body may hold NUL (databases refuse it): every free string says so;
- links from each created object to the routes that read it, so a client (and
  stateful testing) can follow ``id`` from the 201 to them.

What no schema can say (a referenced dataset exists, a model location is inside the
configured roots or buckets, an uploaded file's records are valid) is a 422 whose code
names the reference or the data (``STATE_ERROR_CODES``).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.schemas.deletion_requests import DeletionRequestCreate
from api.schemas.keys import KeyCreate
from api.schemas.models import ModelCreate
from api.schemas.webhooks import WebhookCreate
from core.methods import DEFAULT_METHOD, LISTED_METHODS, METHODS
from core.methods.guard_spec import GUARD_METHOD, GuardHyperparameters
from core.spec import SHARDED_STRATEGIES, JobSpec

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF.format(model="ErrorResponse")}

#: Codes of the 422s that depend on stored state or configuration rather than on the
#: request's shape: what positive schema-driven testing may meet with valid requests.
STATE_ERROR_CODES = frozenset(
    {
        "unknown_dataset",
        "dataset_shredded",
        "unknown_model",
        "unknown_deletion_request",
        "unknown_oracle_job",
        "oracle_not_ready",
        "oracle_not_found",
        "model_location_not_allowed",
        "model_not_found",
        "invalid_data",
        "missing_field",  # a file's record lacks a field
        "unsupported_format",
        "empty_dataset",
        "invalid_encoding",
        "answer_truncated",
        "unresolvable_webhook_url",  # DNS
        "forbidden_webhook_url",  # OBLIVIATE_WEBHOOK_ALLOW_PRIVATE
    }
)
#: Text without NUL (U+0000), which Postgres cannot store.
NO_NUL_PATTERN = "^[^\\u0000]*$"
#: Python's whitespace (what ``str.strip`` removes, which differs from a regex's \s).
_PY_SPACE = "\\t\\n\\u000b\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
#: Text that is not blank once stripped (fields of bodies that strip whitespace).
NOT_BLANK_PATTERN = f"^[^\\u0000]*[^\\u0000{_PY_SPACE}][^\\u0000]*$"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model`` (and nothing else:
    415 for other media types)."""
    schema = {"$ref": REF.format(model=model.__name__)}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {
            "415": {
                "description": "The body was not sent as application/json.",
                "content": {"application/json": {"schema": ERROR_REF}},
            }
        },
    }


def replay_response(model: type[BaseModel], what: str) -> dict[int, Any]:
    """The 200 of a repeated ``Idempotency-Key``."""
    return {
        200: {
            "model": model,
            "description": f"The {what} an earlier request with the same Idempotency-Key and "
            "body made (a replay: nothing new was created).",
        }
    }


FILE_RESPONSE = {
    200: {
        "description": "The file's bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
HTML_OR_PNG_RESPONSE = {
    200: {
        "description": "report.html, or a plot next to it.",
        "content": {
            "text/html": {"schema": {"type": "string"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A JSONL, CSV or Parquet file (by its name's suffix); "
                            "every record is validated (422 naming file, line and field).",
                        },
                        "name": {"type": "string", "maxLength": 256, "pattern": NO_NUL_PATTERN},
                    },
                }
            }
        },
    }
}

#: The shapes of a model reference (``classify_model_location``); whether one may be
#: loaded (model roots, OBLIVIATE_MODEL_BUCKETS, hub ids allowed, public addresses) is
#: configuration, answered by 422 ``model_location_not_allowed``.
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/(?!\.{1,2}(?:/|$))[^/?#;\u0000]+)*/?"
_HTTP = r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[^?#\u0000]*\.(?:tar|tar\.gz|tgz|zip)"
_HUB = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_LOCAL = r"(?:/|file:///)[^\u0000]*"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
MODEL_LOCATION_PATTERN = f"^(?:{_LOCAL}|{_S3}|{_HTTP}|{_HUB})$"
MODEL_REFERENCE_PATTERN = f"^(?:{_NAME}|{_LOCAL}|{_S3}|{_HTTP}|{_HUB})$"
ORACLE_PATTERN = (
    f"^(?:job:[a-z]{{1,8}}_[A-Za-z0-9._-]{{1,64}}|{_NAME}|{_LOCAL}|{_S3}|{_HTTP}|{_HUB})$"
)


#: the JSON bodies routes declare with ``json_body`` (FastAPI does not see them)
REQUEST_BODIES = (JobSpec, ModelCreate, DeletionRequestCreate, WebhookCreate, KeyCreate)


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_BODIES:
                definition = model.model_json_schema(ref_template=REF)
                schemas.update(definition.pop("$defs", {}))
                schemas[model.__name__] = definition
            schemas.setdefault("ErrorResponse", _error_response_schema(schemas))
            _add_method_variants(schemas)
            _add_reference_patterns(schemas)
            schemas["DeletionRequestCreate"]["properties"]["subject"]["pattern"] = NOT_BLANK_PATTERN
            _add_request_job(schemas)
            request_schemas = _reachable(schemas, [model.__name__ for model in REQUEST_BODIES])
            for name in request_schemas:
                _forbid_nul(schemas[name])
            _add_links(document)
            _parameters_are_never_null(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


def _add_reference_patterns(schemas: dict) -> None:
    schemas["ModelCreate"]["properties"]["source"]["pattern"] = MODEL_LOCATION_PATTERN
    schemas["JobSpec"]["properties"]["model"]["pattern"] = MODEL_REFERENCE_PATTERN
    oracle = schemas["EvaluationSpec"]["properties"]["oracle"]
    for option in oracle.get("anyOf", [oracle]):
        if option.get("type") == "string":
            option["pattern"] = ORACLE_PATTERN
        elif option.get("type") == "array":
            option["items"]["pattern"] = ORACLE_PATTERN
            option["uniqueItems"] = True


def _error_response_schema(schemas: dict) -> dict:
    from api.schemas.common import ErrorResponse

    definition = ErrorResponse.model_json_schema(ref_template=REF)
    schemas.update(definition.pop("$defs", {}))
    return definition


def _add_method_variants(schemas: dict) -> None:
    """``kind`` decides what a job trains on, and ``hyperparameters`` follow it: an
    unlearning job needs ``forget`` (no ``train``) and its hyperparameters follow
    ``method``, one ``oneOf`` variant per registered method (the default's also matches
    when ``method`` is absent), and one for GUARD (a retain set, no ``lora``:
    ``JobSpec._guard_hyperparameters``); a fine-tuning job needs ``train`` (no
    ``forget``, no ``deletion_request``) and takes fine-tuning hyperparameters whatever
    ``method`` says."""
    from core.training.finetune import FinetuneHyperparameters

    job = schemas["JobSpec"]
    methods = []
    rules = {name: _training_rules(method.hyperparameters) for name, method in METHODS.items()}
    # Rules every method has alike are stated once, beside the variants: repeated in each,
    # a seventh method made the operation's schema canonicalize to a form schemathesis
    # cannot generate from.
    shared = [rule for rule in rules[DEFAULT_METHOD] if all(rule in r for r in rules.values())]
    for name, method in METHODS.items():
        reference = _component(schemas, method.hyperparameters)
        variant = {
            "title": f"{name} job",
            "properties": {"method": {"const": name}, "hyperparameters": reference},
        }
        own = [rule for rule in rules[name] if rule not in shared]
        if method.trainable is not None:
            # A method that trains part of the model is refused under fsdp and
            # deepspeed (unsupported_strategy).
            own.append({"not": SHARDED})
        if own:
            variant["allOf"] = own
        if name != DEFAULT_METHOD:
            variant["required"] = ["method"]
        methods.append(variant)
    methods.append(
        {
            "title": f"{GUARD_METHOD} job",
            "properties": {
                "method": {"const": GUARD_METHOD},
                "hyperparameters": _component(schemas, GuardHyperparameters),
                "retain": {"type": "string", "minLength": 1},
                "lora": {"type": "null"},
            },
            "required": ["method", "retain"],
        }
    )
    unlearn = {
        "title": "unlearning job",
        "properties": {
            "kind": {"const": "unlearn"},
            "forget": {"type": "string"},
            "train": {"type": "null"},
            "method": {"enum": list(LISTED_METHODS)},
        },
        "required": ["forget"],
        "oneOf": methods,
    }
    if shared:
        unlearn["allOf"] = shared
    finetune = {
        "title": "fine-tuning job",
        "properties": {
            "kind": {"const": "finetune"},
            "train": {"type": "string"},
            "forget": {"type": "null"},
            "deletion_request": {"type": "null"},
            "hyperparameters": _component(schemas, FinetuneHyperparameters),
        },
        "required": ["kind", "train"],
        "allOf": _training_rules(FinetuneHyperparameters),
    }
    job["oneOf"] = [unlearn, finetune]


def _add_request_job(schemas: dict) -> None:
    """The ``job`` of a deletion request the service serves (``core.batch_settings``):
    the unlearning job spec without what the request gives itself (model, forget set,
    kind, the request), no guard (it leaves the data in the weights), and an evaluation
    that runs, on the request's own records, against a holdout set. ``forget_dataset``,
    ``model`` and ``job`` come together."""
    from core.batch_settings import FIELDS_OF_THE_REQUEST

    job = copy.deepcopy(schemas["JobSpec"])
    unlearn = next(v for v in job.pop("oneOf") if v["title"] == "unlearning job")
    job["oneOf"] = [
        variant
        for variant in unlearn["oneOf"]
        if variant["properties"]["method"].get("const") != GUARD_METHOD
    ]
    if unlearn.get("allOf"):  # the rules every method shares
        job["allOf"] = job.get("allOf", []) + unlearn["allOf"]
    for name in FIELDS_OF_THE_REQUEST:
        job["properties"].pop(name, None)
    job["properties"]["method"] = {
        **job["properties"]["method"],
        "enum": [name for name in LISTED_METHODS if name != GUARD_METHOD],
    }
    job["properties"]["evaluation"] = {"$ref": REF.format(model="DeletionRequestEvaluation")}
    job["required"] = ["evaluation"]
    job["title"] = "DeletionRequestJob"
    job["description"] = (
        "The job settings of a deletion request the service serves: a job spec without "
        "model, forget and deletion_request."
    )
    evaluation = copy.deepcopy(schemas["EvaluationSpec"])
    for name in ("forget", "knowmem_forget"):
        evaluation["properties"].pop(name)
    evaluation["properties"]["enabled"] = {"const": True, "default": True}
    evaluation["properties"]["holdout"] = {
        "type": "string",
        "minLength": 1,
        "description": "Data never trained on, of the same form as the request's records: "
        "the verdict compares the two.",
    }
    evaluation["required"] = ["holdout"]
    evaluation["title"] = "DeletionRequestEvaluation"
    schemas["DeletionRequestEvaluation"] = evaluation
    schemas["DeletionRequestJob"] = job
    create = schemas["DeletionRequestCreate"]
    create["properties"]["job"] = {
        "anyOf": [{"$ref": REF.format(model="DeletionRequestJob")}, {"type": "null"}],
        "default": None,
        "description": create["properties"]["job"].get("description"),
    }
    for option in create["properties"]["model"].get("anyOf", []):
        if option.get("type") == "string":
            option["pattern"] = MODEL_REFERENCE_PATTERN
    together = ("forget_dataset", "model", "job")
    create["dependentRequired"] = {
        name: [other for other in together if other != name] for name in together
    }


def _component(schemas: dict, model: type[BaseModel]) -> dict:
    """Add ``model``'s schema, with its rules among its own fields, to the components;
    a reference to it."""
    definition = model.model_json_schema(ref_template=REF)
    schemas.update(definition.pop("$defs", {}))
    if rules := _own_rules(model):
        definition["allOf"] = rules
    schemas[model.__name__] = definition
    return {"$ref": REF.format(model=model.__name__)}


def _own_rules(model: type[BaseModel]) -> list[dict]:
    """Cross-field rules among the hyperparameters alone, stated in their own schema:
    as more of the job's rules (``_training_rules``) they made ``POST /v1/jobs``'s
    schema canonicalize to a form schemathesis cannot generate from."""
    rules = []
    if "match_pull" in model.model_fields:
        # Pulling back needs match_holdout's ceilings (invalid_value): no pull, or
        # matching.
        no_pull = {"properties": {"match_pull": {"const": 0}}}
        matching = {"required": ["match_holdout"], "properties": {"match_holdout": {"const": True}}}
        rules.append({"anyOf": [no_pull, matching]})
    return rules


#: the job runs under a sharded strategy (fsdp, deepspeed)
SHARDED = {
    "required": ["resources"],
    "properties": {
        "resources": {
            "required": ["strategy"],
            "properties": {"strategy": {"enum": list(SHARDED_STRATEGIES)}},
        }
    },
}


def _training_rules(model: type[BaseModel]) -> list[dict]:
    """The hyperparameters' cross-field rules (``UnlearningHyperparameters`` and
    ``JobSpec.method_hyperparameters``) as JSON Schema, given the method's defaults."""
    fields = model.model_fields

    def is_value(field: str, value) -> dict:
        """``hyperparameters.<field>`` equals ``value``, given or by default."""
        condition = {"properties": {"hyperparameters": {"properties": {field: {"const": value}}}}}
        if fields[field].default != value:
            condition["required"] = ["hyperparameters"]
            condition["properties"]["hyperparameters"]["required"] = [field]
        return condition

    no_retain_term = {"anyOf": [is_value("retain_loss", "none"), is_value("retain_coeff", 0)]}
    # an empty name is no retain set (``JobSpec``: ``not self.retain``)
    has_retain_set = {
        "required": ["retain"],
        "properties": {"retain": {"type": "string", "minLength": 1}},
    }
    deepspeed = {
        "required": ["resources"],
        "properties": {
            "resources": {
                "required": ["strategy"],
                "properties": {"strategy": {"const": "deepspeed"}},
            }
        },
    }
    no_lora = {
        "anyOf": [{"not": {"required": ["lora"]}}, {"properties": {"lora": {"type": "null"}}}]
    }
    rules = [
        # A retain term needs a retain set (missing_retain_set).
        {"anyOf": [has_retain_set, no_retain_term]},
        # fp16 is refused under fsdp and deepspeed (unsupported_strategy).
        {"not": {"allOf": [SHARDED, is_value("precision", "fp16")]}},
        # bf16-pure full fine-tuning is refused under deepspeed (unsupported_strategy).
        {"not": {"allOf": [deepspeed, no_lora, is_value("precision", "bf16-pure")]}},
    ]
    if "forget_coeff" in fields:
        # Something must be trained: not a zero forget weight without a retain term.
        rules.append({"not": {"allOf": [is_value("forget_coeff", 0), no_retain_term]}})
    sharpness_aware = {
        "required": ["hyperparameters"],
        "properties": {
            "hyperparameters": {
                "required": ["sam_rho"],
                "properties": {"sam_rho": {"exclusiveMinimum": 0}},
            }
        },
    }
    if "sam_rho" in fields:
        # Sharpness-aware steps are refused under fsdp and deepspeed (unsupported_strategy).
        rules.append({"not": {"allOf": [SHARDED, sharpness_aware]}})
    no_target = {"required": ["target"], "properties": {"target": {"type": "null"}}}
    if "match_holdout" in fields:
        # Matching needs the evaluation points of a target (invalid_value).
        rules.append({"not": {"allOf": [is_value("match_holdout", True), no_target]}})
    if "sam_steer" in fields:
        # Steering needs a target (invalid_value); it is sharpness-aware, so refused
        # under fsdp and deepspeed (unsupported_strategy).
        steered = is_value("sam_steer", True)
        rules.append({"not": {"allOf": [steered, no_target]}})
        rules.append({"not": {"allOf": [SHARDED, steered]}})
    return rules


def _reachable(schemas: dict, roots: list[str]) -> set[str]:
    """The component schemas ``roots`` refer to, transitively."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        stack.extend(_refs(schemas[name]))
    return seen


def _refs(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.append(ref.rsplit("/", 1)[1])
        for value in node.values():
            found.extend(_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_refs(value))
    return found


def _forbid_nul(node) -> None:
    """Every free string (no pattern, enum, const or format of its own) gets the
    no-NUL pattern."""
    if isinstance(node, dict):
        free = node.get("type") == "string" and not (
            {"pattern", "enum", "const", "format"} & node.keys()
        )
        if free:
            node["pattern"] = NO_NUL_PATTERN
        for key, value in node.items():
            if key not in ("const", "enum", "default", "examples"):
                _forbid_nul(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_nul(value)


def _parameters_are_never_null(document: dict) -> None:
    """An optional query or header parameter is absent or a string, never JSON null
    (FastAPI writes ``str | None`` as ``anyOf: [string, null]``, and a fuzzer then sends
    the text ``null``)."""
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                options = schema.get("anyOf")
                if not options:
                    continue
                kept = [option for option in options if option.get("type") != "null"]
                if len(kept) == 1 and len(kept) < len(options):
                    del schema["anyOf"]
                    schema.update(kept[0])


#: Routes under a created object that answer 404 until its job has finished (the report,
#: stored files): not linked from the 201, which would promise them.
LATER_PARTS = ("/report", "/files/")


def _add_links(document: dict) -> None:
    """From each ``POST /v1/<things>`` that creates (201, and its 200 replay) to every
    operation on ``/v1/<things>/{param}...``: the param comes from the created object's
    field of that name, else its ``id``."""
    paths = document["paths"]
    for collection, item in paths.items():
        create = item.get("post")
        if not create or "201" not in create.get("responses", {}):
            continue
        links = {}
        for path, operations in paths.items():
            prefix = collection + "/{"
            if not path.startswith(prefix):
                continue
            param = path[len(prefix) :].split("}", 1)[0]
            if any(part in path for part in LATER_PARTS):
                continue  # exists only once the job has finished: no link promises it
            field = "name" if param == "name" else "id"
            for operation in operations.values():
                operation_id = operation.get("operationId")
                if not operation_id:
                    continue
                links[operation_id] = {
                    "operationId": operation_id,
                    "parameters": {param: f"$response.body#/{field}"},
                }
        for status in ("201", "200"):
            if status in create["responses"] and links:
                create["responses"][status]["links"] = copy.deepcopy(links)
