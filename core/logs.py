"""Logging for the service processes: text for people, or one JSON object per line for
a log pipeline (``OBLIVIATE_LOG_FORMAT=json`` or ``--log-format json``).

Every line carries the context it happened in: ``request_id`` (the API), ``job_id`` and
``attempt`` (a worker running a job), ``tenant`` (the caller's, where known). The
context lives in contextvars, bound where a request or a job starts, so code that logs
needs no extra arguments. JSON lines come from python-json-logger's ``JsonFormatter``
(the stdlib's logging underneath, so every library's records, Celery's and uvicorn's
included, come out in the same shape).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The fields every line carries (null when unknown), in this order.
CONTEXT_FIELDS = ("request_id", "job_id", "attempt", "tenant")

_context: dict[str, contextvars.ContextVar] = {
    name: contextvars.ContextVar(f"obliviate_log_{name}", default=None) for name in CONTEXT_FIELDS
}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"
JSON_FIELDS = ("levelname", "name", "message")
#: Marks the handler this module installed, so configuring again replaces it.
_HANDLER_NAME = "obliviate"


def bind(**values: Any) -> None:
    """Set context fields for the rest of this thread's (or task's) work."""
    for name, value in values.items():
        _context[name].set(value)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Set context fields for the duration of a block, then restore them."""
    tokens = {name: _context[name].set(value) for name, value in values.items()}
    try:
        yield
    finally:
        for name, token in tokens.items():
            _context[name].reset(token)


def current(name: str) -> Any:
    return _context[name].get()


class ContextFilter(logging.Filter):
    """Copies the bound context onto every record: as attributes (JSON fields) and as a
    short ``context`` string for the text format (`` [job_... attempt 2]``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        shown = []
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = _context[name].get()
            setattr(record, name, value)
            if value is not None:
                shown.append(f"{name}={value}")
        record.context = f" [{' '.join(shown)}]" if shown else ""
        return True


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            [*JSON_FIELDS, *CONTEXT_FIELDS],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC, microseconds
            # Attributes every record has (or the text format adds) are not extra fields.
            reserved_attrs=[*RESERVED_ATTRS, "taskName", "context", "color_message"],
        )
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be text or json, got {log_format!r}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (as logging's own
    last-resort handler does), not to the stream that was current at configuration:
    a test's captured stderr, replaced later, must not keep receiving the lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(log_format: str = "text", level: str | int = "INFO") -> None:
    """Send the root logger's records to stderr in ``log_format``. Idempotent: a second
    call replaces the handler the first installed (and leaves others, e.g. pytest's)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become records too, in the same format
    # uvicorn's loggers come with handlers of their own (text, when started by the
    # uvicorn command): send their records through this one instead. Its access log is
    # switched off: the API's middleware writes one richer line per request.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
