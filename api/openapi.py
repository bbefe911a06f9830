"""OpenAPI document additions: bodies the routes parse themselves (strict JSON, streamed
multipart) are described here, so /docs still shows their schemas."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.schemas.deletion_requests import DeletionRequestCreate
from api.schemas.models import ModelCreate
from core.spec import JobSpec

REF = "#/components/schemas/{model}"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    schema = {"$ref": REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string", "maxLength": 256},
                    },
                }
            }
        },
    }
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (JobSpec, ModelCreate, DeletionRequestCreate):
                definition = model.model_json_schema(ref_template=REF)
                schemas.update(definition.pop("$defs", {}))
                schemas[model.__name__] = definition
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
