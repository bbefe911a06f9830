"""Errors that carry what a user needs to fix them.

Every error a user can cause has a stable machine-readable ``code``, a message, and
the ``param`` (field, file, line) at fault. The API turns them into 4xx responses; the
worker stores them on the failed job; the CLI prints them.
"""

from __future__ import annotations


class ObliviateError(Exception):
    """Base class: ``code`` is stable and documented, ``message`` is for humans."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param}

    def __str__(self) -> str:
        return f"{self.message} ({self.param})" if self.param else self.message


class InvalidRequest(ObliviateError):
    code = "invalid_request"
    http_status = 422


class DataValidationError(InvalidRequest):
    """A record in a forget/retain/eval file is unusable.

    ``param`` names the file, line and field, e.g. ``forget.jsonl:12:answer``.
    """

    code = "invalid_data"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        code: str | None = None,
    ):
        self.file, self.line, self.field = file, line, field
        where = ":".join(str(part) for part in (file, line, field) if part is not None) or None
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + message, param=where, code=code)


class DataLimitExceeded(DataValidationError):
    """A dataset file expands past one of the data limits (records, decoded bytes, line
    or cell size); ``code`` names the limit."""

    http_status = 413


class NotFound(ObliviateError):
    code = "not_found"
    http_status = 404


class Forbidden(ObliviateError):
    """The caller is known, but its role does not allow this."""

    code = "forbidden"
    http_status = 403


class Conflict(ObliviateError):
    code = "conflict"
    http_status = 409


class ModelLocationError(InvalidRequest):
    """A model reference points somewhere we cannot or must not load from."""

    code = "invalid_model"


class TrainingError(ObliviateError):
    """Training could not finish; no checkpoint was published."""

    code = "training_failed"


class NonFiniteLoss(TrainingError):
    code = "non_finite_loss"


class Diverged(TrainingError):
    """The loss blew up (core.training.divergence): the weights are no longer a model
    worth publishing, so the job fails rather than succeeding with them."""

    code = "diverged"


class Cancelled(ObliviateError):
    """Raised inside the training loop when the job was cancelled."""

    code = "cancelled"


class Paused(ObliviateError):
    """Raised inside the training loop when a pause was asked for; carries the training
    state at the step boundary where it stopped, so that the run can go on later."""

    code = "paused"

    def __init__(self, message: str, state=None):
        super().__init__(message)
        self.state = state
