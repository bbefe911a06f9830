from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class ErrorObject(BaseModel):
    code: str
    message: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx response."""

    error: ErrorObject


class ListObject(BaseModel, Generic[T]):
    """A cursor page: pass ``last_id`` as ``after`` to get the next one."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    last_id: str | int | None = None


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)
