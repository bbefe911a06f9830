"""The model-serving process: an OpenAI-compatible server over registered models.

``obliviate inference --port 8001`` (or ``uvicorn --factory
core.inference.server:create_app``); ``obliviate serve`` starts one beside the API,
which forwards ``/openai/v1`` to it (``OBLIVIATE_INFERENCE_URL``). It reads the model
registry from the same database and loads models the way workers do, so every
registered model (demo, base, a finished job's output) can be asked by name.

Routes mirror OpenAI's under ``/v1``: ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` answers Server-Sent Events in OpenAI's
chunk format, ending with ``data: [DONE]``); ``GET /health``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from core.errors import NotFound, ObliviateError
from core.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    from_obliviate_error,
    model_list,
    parse_request,
)
from core.logs import configure_logging
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request checked against its model, ready to decode."""

    request: ChatCompletionRequest | CompletionRequest
    loaded: object  # core.inference.models.LoadedModel
    prompts: list[list[int]]
    sampling: object  # core.inference.generation.Sampling
    id: str
    created: int


class InferenceService:
    def __init__(self, settings: Settings, sessions):
        from core.inference.models import ModelCache
        from core.runtime import default_device

        self.sessions = sessions
        self.cache = ModelCache(
            settings,
            self.registry_lookup,
            max_models=settings.inference_max_models,
            device=default_device(),
            max_batch=settings.inference_max_batch,
        )

    def registry_lookup(self, name: str) -> str | None:
        from core.db.model_registry import get_model_by_name

        with self.sessions() as session:
            try:
                return get_model_by_name(session, name).source
            except NotFound:
                return None

    def list_models(self) -> dict:
        from core.db.model_registry import all_models, guard_variants

        with self.sessions() as session:
            return model_list(all_models(session), guard_variants(session))

    def prepare(self, request: ChatCompletionRequest | CompletionRequest) -> Prepared:
        from core.inference.generation import Sampling, encode_chat, encode_completion_prompt

        loaded = self.cache.get(request.model)
        tokenizer = loaded.tokenizer
        if isinstance(request, ChatCompletionRequest):
            messages = [(message.role, message.text) for message in request.messages]
            prompts = [encode_chat(tokenizer, messages, loaded.prompt_template)]
            prompt_param, prefix = "messages", "chatcmpl"
        else:
            prompts = [encode_completion_prompt(tokenizer, text) for text in request.prompts]
            prompt_param, prefix = "prompt", "cmpl"
        longest = max(len(ids) for ids in prompts)
        room = loaded.context_length - longest
        if room <= 0:
            raise OpenAIError(
                400,
                f"this model's context is {loaded.context_length} tokens and the prompt "
                f"is {longest}; shorten it",
                code="context_length_exceeded",
                param=prompt_param,
            )
        limit = request.token_limit
        if limit is not None and limit > room:
            raise OpenAIError(
                400,
                f"this model's context is {loaded.context_length} tokens: the prompt takes "
                f"{longest}, so at most {room} can be generated, not {limit}",
                code="context_length_exceeded",
                param="max_completion_tokens"
                if getattr(request, "max_completion_tokens", None)
                else "max_tokens",
            )
        sampling = Sampling(
            max_new_tokens=limit or room,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=request.stop_sequences,
        )
        return Prepared(
            request, loaded, prompts, sampling, f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        )

    def deltas(self, prepared: Prepared, prompt_ids: list[int]):
        loaded = prepared.loaded
        processor = None
        if loaded.guards:
            from core.methods.guard import GuardProcessor

            with loaded.lock:  # the classifiers read the model's hidden states
                processor = GuardProcessor.combine(loaded.guards, loaded.model, prompt_ids)
        return loaded.batcher.submit(prompt_ids, prepared.sampling, processor)

    def complete(self, prepared: Prepared) -> dict:
        chat = isinstance(prepared.request, ChatCompletionRequest)
        choices, completion_tokens = [], 0
        for index, prompt_ids in enumerate(prepared.prompts):
            text, finish, tokens = "", None, 0
            for delta in self.deltas(prepared, prompt_ids):
                text += delta.text
                finish, tokens = delta.finish_reason, delta.completion_tokens
            completion_tokens += tokens
            if chat:
                message = {"role": "assistant", "content": text}
                choices.append(
                    {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
                )
            else:
                choices.append(
                    {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
                )
        return {
            "id": prepared.id,
            "object": "chat.completion" if chat else "text_completion",
            "created": prepared.created,
            "model": prepared.request.model,
            "choices": choices,
            "usage": usage(prepared, completion_tokens),
        }

    def stream(self, prepared: Prepared) -> Iterator[str]:
        """Server-Sent Events: OpenAI's chunks, then ``data: [DONE]``. Runs in the
        thread pool, one ``next`` at a time (Starlette's iteration of a sync iterator)."""
        chat = isinstance(prepared.request, ChatCompletionRequest)
        head = {
            "id": prepared.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": prepared.created,
            "model": prepared.request.model,
        }

        def chunk(index: int, text: str | None, finish: str | None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish}
                choice["logprobs"] = None
            return event({**head, "choices": [choice]})

        completion_tokens = 0
        try:
            for index, prompt_ids in enumerate(prepared.prompts):
                if chat:
                    role = {"role": "assistant", "content": ""}
                    yield event(
                        {
                            **head,
                            "choices": [{"index": index, "delta": role, "finish_reason": None}],
                        }
                    )
                for delta in self.deltas(prepared, prompt_ids):
                    if delta.text:
                        yield chunk(index, delta.text, None)
                    if delta.finish_reason:
                        completion_tokens += delta.completion_tokens
                        yield chunk(index, None, delta.finish_reason)
            if prepared.request.include_usage:
                yield event({**head, "choices": [], "usage": usage(prepared, completion_tokens)})
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-band
            log.exception("generation failed", exc_info=exc)
            error = OpenAIError(500, f"generation failed: {exc}", code="generation_failed")
            yield event(error.body())
        yield "data: [DONE]\n\n"


def usage(prepared: Prepared, completion_tokens: int) -> dict:
    prompt_tokens = sum(len(ids) for ids in prepared.prompts)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def read_body(request: Request) -> dict:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise OpenAIError(400, "the body is not valid JSON", code="invalid_json") from None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from core.db.engine import make_engine, make_session_factory

        engine = make_engine(settings.database_url, pool_size=2, pre_ping=True)
        app.state.service = InferenceService(settings, make_session_factory(engine))
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title="Obliviate inference", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ObliviateError)
    async def _obliviate_error(_request: Request, exc: ObliviateError) -> JSONResponse:
        return error_response(from_obliviate_error(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(OpenAIError(exc.status_code, str(exc.detail), code="not_found"))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(OpenAIError(500, "internal server error", code="internal_error"))

    @app.get("/health")
    async def health(request: Request) -> dict:
        return {"status": "ok", "models_loaded": request.app.state.service.cache.names()}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        return await run_in_threadpool(request.app.state.service.list_models)

    async def generate(request: Request, endpoint: str):
        service: InferenceService = request.app.state.service
        parsed = parse_request(endpoint, await read_body(request))
        prepared = await run_in_threadpool(service.prepare, parsed)
        if parsed.stream:
            return StreamingResponse(
                service.stream(prepared),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return JSONResponse(await run_in_threadpool(service.complete, prepared))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completions")

    return app
