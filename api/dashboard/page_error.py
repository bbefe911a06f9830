"""A service error on a dashboard page: shown as an HTML page, not JSON."""

from __future__ import annotations

from core.errors import ObliviateError


class PageError(Exception):
    def __init__(self, error: ObliviateError):
        self.error = error
