"""OpenAI-compatible inference under ``/openai/v1``: an OpenAI client's ``base_url`` is
``http://HOST:PORT/openai/v1``. Errors here take OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, which its clients parse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from api.body import read_json_object
from api.deps import ReadDatabaseDep
from api.services import openai_compat
from api.services.openai_compat import InferenceProxy
from core.errors import ObliviateError
from core.inference.protocol import OpenAIError, from_obliviate_error


class OpenAIRoute(APIRoute):
    """Turns every error of a route into OpenAI's error object."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                error = exc
            except ObliviateError as exc:
                error = from_obliviate_error(exc)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
                error = OpenAIError(
                    400, first.get("msg", "invalid value"), code="invalid_value", param=param
                )
            except HTTPException as exc:
                error = OpenAIError(exc.status_code, str(exc.detail), code="http_error")
            return JSONResponse(error.body(), status_code=error.status)

        return route


async def get_inference(request: Request) -> InferenceProxy:
    return request.app.state.inference


InferenceDep = Annotated[InferenceProxy, Depends(get_inference)]

router = APIRouter(prefix="/openai/v1", tags=["openai"], route_class=OpenAIRoute)


@router.get("/models")
async def list_models(db: ReadDatabaseDep) -> dict:
    """Every registered model (demo, base, finished jobs' outputs) in OpenAI's shape."""
    return await db.run(openai_compat.list_models)


@router.get("/models/{name}")
async def get_model(name: str, db: ReadDatabaseDep) -> dict:
    return await db.run(openai_compat.get_model, name)


@router.post("/chat/completions")
async def chat_completions(request: Request, db: ReadDatabaseDep, inference: InferenceDep):
    """OpenAI's chat completion, streamed with ``stream: true``; the model's chat
    template renders the messages (docs/inference.md)."""
    body = await read_json_object(request)
    return await openai_compat.generate("chat/completions", body, db, inference)


@router.post("/completions")
async def completions(request: Request, db: ReadDatabaseDep, inference: InferenceDep):
    """OpenAI's (legacy) text completion, streamed with ``stream: true``."""
    body = await read_json_object(request)
    return await openai_compat.generate("completions", body, db, inference)
