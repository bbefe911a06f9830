"""The OpenAI wire format: request schemas and the error object.

Imported by the API process, so no torch here. Parameters the OpenAI API has and we
do not implement (``n`` > 1, ``logprobs``, tools) are refused with a 400 naming them
rather than silently ignored; unknown extra fields are ignored, as OpenAI-compatible
servers do, so clients that always send them (``user``, ``metadata``) still work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_SEQUENCES = 4


class OpenAIError(Exception):
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or error_type(status)

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = Field(min_length=1, description="A registered model's name.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most.")
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy (deterministic).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=1, description="Choices per prompt (only 1).")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, description="Makes sampling repeatable.")
    logprobs: Any = None
    echo: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value not in (None, False):
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value):
        if value:
            raise ValueError("echo is not supported")
        return value

    @property
    def stop_sequences(self) -> list[str]:
        return [s for s in (self.stop or []) if s]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    @property
    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens.")
    tools: Any = None

    @field_validator("messages")
    @classmethod
    def _text_only(cls, messages: list[ChatMessage]):
        for message in messages:
            message.text  # noqa: B018 - raises for non-text parts
        return messages

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value):
        if value:
            raise ValueError("tools are not supported")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    suffix: str | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value):
        if value:
            raise ValueError("suffix is not supported")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


REQUESTS: dict[str, type[_Request]] = {
    "chat/completions": ChatCompletionRequest,
    "completions": CompletionRequest,
}


def parse_request(endpoint: str, body: Any) -> _Request:
    """The validated request, or an OpenAIError (400) naming the first bad parameter."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the body must be a JSON object", code="invalid_body")
    try:
        return REQUESTS[endpoint].model_validate(body)
    except ValidationError as exc:
        raise invalid_param(exc) from None


def invalid_param(exc: ValidationError) -> OpenAIError:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ())]
    # A union's branch name ("str", "list[str]") is pydantic's, not the client's.
    location = [
        part for part in location if part not in ("str", "list[str]", "list[dict[str,any]]")
    ]
    param = ".".join(location) or None
    kind = first.get("type", "")
    code = "missing_required_parameter" if kind == "missing" else "invalid_value"
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return OpenAIError(400, f"{param}: {message}" if param else message, code=code, param=param)


def model_list(rows, variants=()) -> dict:
    """Registry rows (``core.db.tables.Model``) as OpenAI's model list, then the
    guarded variants (``(name, guard row)``, owned by ``guard``); ``owned_by`` says
    where each came from (demo, registered, job_output)."""
    data = [model_object(row) for row in rows]
    data += [model_object(row, name=name, owned_by="guard") for name, row in variants]
    return {"object": "list", "data": data}


def model_object(row, *, name: str | None = None, owned_by: str | None = None) -> dict:
    return {
        "id": name or row.name,
        "object": "model",
        "created": int(row.created_at.timestamp()),
        "owned_by": owned_by or row.kind,
    }


def from_obliviate_error(exc) -> OpenAIError:
    """One of the service's own errors (``core.errors.ObliviateError``) as an OpenAI one.
    OpenAI answers a request it cannot serve with 400 where our API says 422."""
    status = 400 if exc.http_status == 422 else exc.http_status
    return OpenAIError(status, exc.message, code=exc.code, param=exc.param)
