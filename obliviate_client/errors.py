"""What a failed call raises: the API's error body, ``{"error": {code, message, param}}``."""

from __future__ import annotations

import httpx


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        response: httpx.Response | None = None,
    ):
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status, self.code, self.message, self.param = status, code, message, param
        self.response = response

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            code, message, param = error["code"], error.get("message") or "", error.get("param")
        except (ValueError, KeyError, TypeError):
            code, message, param = "http_error", response.text[:500], None
        return cls(response.status_code, code, message, param, response)
