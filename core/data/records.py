"""Read forget/retain/evaluation sets from JSONL, CSV or Parquet into records.

Three record shapes are accepted, one per file:

- ``question``/``answer`` (TOFU; optional ``paraphrased_answer``, ``paraphrased_question``
  and ``perturbed_answer``: a list of wrong answers, JSON-encoded in CSV),
- ``prompt``/``completion``,
- ``text`` (raw documents, MUSE-style).

Files are parsed here (rows streamed by :mod:`core.data.formats`, within the data
limits of :mod:`core.data.limits`) rather than through ``datasets``, so that every error
names the file, the line (or Parquet row) and the field. No torch: the API validates
uploads with this module (``scan_records``, which keeps no records).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from core.data.formats import (
    ROW_READERS,
    check_column_names,
    undecodable_json,
)
from core.data.limits import DataBudget, DataLimits
from core.errors import DataValidationError

RecordKind = Literal["qa", "completion", "text"]
FileFormat = Literal["jsonl", "csv", "parquet"]

FORMAT_BY_SUFFIX: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
REQUIRED_FIELDS: dict[RecordKind, tuple[str, str]] = {
    "qa": ("question", "answer"),
    "completion": ("prompt", "completion"),
    "text": ("text", "text"),
}


@dataclass
class Record:
    """One training/evaluation example, whatever the file's shape.

    ``prompt`` is None for raw text; ``answer`` holds the answer, completion or text.
    ``line`` is where it came from, for error messages.
    """

    prompt: str | None
    answer: str
    line: int
    paraphrased_answer: str | None = None
    paraphrased_question: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordSet:
    name: str
    format: FileFormat
    kind: RecordKind
    records: list[Record]
    sha256: str
    size_bytes: int
    columns: list[str]

    def __len__(self) -> int:
        return len(self.records)

    def provenance(self) -> dict:
        """What a checkpoint manifest records about the data it was trained on."""
        return {"name": self.name, "sha256": self.sha256, "records": len(self), "kind": self.kind}

    @property
    def has_truth_ratio_fields(self) -> bool:
        return all(r.paraphrased_answer and r.perturbed_answers for r in self.records)


def detect_format(name: str) -> FileFormat:
    suffix = Path(name).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise DataValidationError(
            f"unsupported file type {suffix or '(none)'!r}; use .jsonl, .csv or .parquet",
            file=name,
            code="unsupported_format",
        )
    return FORMAT_BY_SUFFIX[suffix]


@dataclass
class RecordSummary:
    """What a validation pass learns about a file without keeping its records."""

    name: str
    format: FileFormat
    kind: RecordKind
    count: int
    sha256: str
    size_bytes: int
    columns: list[str]
    has_truth_ratio_fields: bool


def read_records(
    path: str | Path, *, name: str | None = None, limits: DataLimits | None = None
) -> RecordSet:
    """Read and validate a local file, within the data limits (settings by default)."""
    path = Path(path)
    name = name or path.name
    with open(path, "rb") as handle:
        summary, records = _read(handle, name, None, limits, keep=True)
    return _record_set(summary, records, sha256_of_file(path))


def scan_records(path: str | Path, *, name: str, limits: DataLimits | None = None) -> RecordSummary:
    """Validate every record of a local file without keeping them: what an upload
    needs. Memory holds one line, record or Parquet batch at a time."""
    path = Path(path)
    with open(path, "rb") as handle:
        summary, _ = _read(handle, name, None, limits, keep=False)
    summary.sha256 = sha256_of_file(path)
    return summary


def parse_records(
    data: bytes,
    *,
    name: str,
    file_format: FileFormat | None = None,
    limits: DataLimits | None = None,
) -> RecordSet:
    """Parse and validate file contents; raises :class:`DataValidationError`."""
    summary, records = _read(io.BytesIO(data), name, file_format, limits, keep=True)
    return _record_set(summary, records, hashlib.sha256(data).hexdigest())


def sha256_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _record_set(summary: RecordSummary, records: list[Record], sha256: str) -> RecordSet:
    return RecordSet(
        name=summary.name,
        format=summary.format,
        kind=summary.kind,
        records=records,
        sha256=sha256,
        size_bytes=summary.size_bytes,
        columns=summary.columns,
    )


def _read(
    handle: BinaryIO,
    name: str,
    file_format: FileFormat | None,
    limits: DataLimits | None,
    *,
    keep: bool,
) -> tuple[RecordSummary, list[Record]]:
    file_format = file_format or detect_format(name)
    size_bytes = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    budget = DataBudget(limits or DataLimits.from_settings(), name)
    records: list[Record] = []
    kind: RecordKind | None = None
    columns: set[str] = set()
    truth_ratio_fields = True
    for line, row in ROW_READERS[file_format](handle, name, budget):
        if not isinstance(row, dict):
            raise DataValidationError("a record must be a JSON object", file=name, line=line)
        budget.record(line)
        budget.cells(row, line)
        new_columns = row.keys() - columns
        if new_columns:
            check_column_names(new_columns, name, line)
            columns.update(new_columns)
        if kind is None:
            kind = _record_kind(row, name, line)
        record = _to_record(row, kind, name, line)
        truth_ratio_fields = truth_ratio_fields and bool(
            record.paraphrased_answer and record.perturbed_answers
        )
        if keep:
            records.append(record)
    if budget.records == 0:
        raise DataValidationError("the file holds no records", file=name, code="empty_dataset")
    summary = RecordSummary(
        name=name,
        format=file_format,
        kind=kind,
        count=budget.records,
        sha256="",
        size_bytes=size_bytes,
        columns=sorted(columns),
        has_truth_ratio_fields=truth_ratio_fields,
    )
    return summary, records


def _record_kind(row: dict, name: str, line: int) -> RecordKind:
    for kind, (first, _) in REQUIRED_FIELDS.items():
        if first in row:
            return kind
    raise DataValidationError(
        "cannot tell the record shape: expected question/answer, prompt/completion or text "
        f"fields, found {sorted(row) or 'none'}",
        file=name,
        line=line,
        code="missing_field",
    )


def _required_text(row: dict, key: str, name: str, line: int) -> str:
    value = row.get(key)
    if value is None:
        raise DataValidationError(
            "missing field", file=name, line=line, field=key, code="missing_field"
        )
    if not isinstance(value, str):
        raise DataValidationError(
            f"must be a string, got {type(value).__name__}", file=name, line=line, field=key
        )
    if not value.strip():
        raise DataValidationError("must not be empty", file=name, line=line, field=key)
    return value


def _optional_text(row: dict, key: str, name: str, line: int) -> str | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    return _required_text(row, key, name, line)


def _perturbed(row: dict, name: str, line: int) -> list[str]:
    value = row.get("perturbed_answer")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        # CSV cells carry the list JSON-encoded; a plain string is a single wrong answer.
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise DataValidationError(
                    f"not a JSON list of strings: {exc.msg}",
                    file=name,
                    line=line,
                    field="perturbed_answer",
                ) from None
            except (RecursionError, ValueError) as exc:
                raise undecodable_json(exc, name, line, field="perturbed_answer") from None
        else:
            value = [value]
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataValidationError(
            "must be a list of non-empty strings", file=name, line=line, field="perturbed_answer"
        )
    return value


def _to_record(row: dict, kind: RecordKind, name: str, line: int) -> Record:
    prompt_key, answer_key = REQUIRED_FIELDS[kind]
    if kind == "text":
        prompt = None
    else:
        prompt = _required_text(row, prompt_key, name, line)
    answer = _required_text(row, answer_key, name, line)
    known = {
        prompt_key,
        answer_key,
        "paraphrased_answer",
        "paraphrased_question",
        "perturbed_answer",
    }
    meta = {k: v for k, v in row.items() if k not in known and _is_plain(v)}
    return Record(
        prompt=prompt,
        answer=answer,
        line=line,
        paraphrased_answer=_optional_text(row, "paraphrased_answer", name, line),
        paraphrased_question=_optional_text(row, "paraphrased_question", name, line),
        perturbed_answers=_perturbed(row, name, line),
        meta=meta,
    )


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
