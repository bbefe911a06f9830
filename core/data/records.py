"""Read forget/retain/evaluation sets from JSONL, CSV or Parquet into records.

Three record shapes are accepted, one per file:

- ``question``/``answer`` (TOFU; optional ``paraphrased_answer``, ``paraphrased_question``
  and ``perturbed_answer``: a list of wrong answers, JSON-encoded in CSV),
- ``prompt``/``completion``,
- ``text`` (raw documents, MUSE-style).

Files are parsed here rather than through ``datasets`` so that every error names the
file, the line (or Parquet row) and the field. No torch: the API validates uploads with
this module.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
UNSTORABLE_TEXT = "text must not contain NUL characters or unpaired surrogates"


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


def read_records(path: str | Path, *, name: str | None = None) -> RecordSet:
    """Read and validate a local file."""
    path = Path(path)
    return parse_records(path.read_bytes(), name=name or path.name)


def parse_records(data: bytes, *, name: str, file_format: FileFormat | None = None) -> RecordSet:
    """Parse and validate file contents; raises :class:`DataValidationError`."""
    file_format = file_format or detect_format(name)
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[file_format](
        data, name
    )
    records: list[Record] = []
    kind: RecordKind | None = None
    columns: set[str] = set()
    for line, row in rows:
        if not isinstance(row, dict):
            raise DataValidationError("a record must be a JSON object", file=name, line=line)
        new_columns = row.keys() - columns
        if new_columns:
            _check_column_names(new_columns, name, line)
            columns.update(new_columns)
        if kind is None:
            kind = _record_kind(row, name, line)
        records.append(_to_record(row, kind, name, line))
    if not records:
        raise DataValidationError("the file holds no records", file=name, code="empty_dataset")
    return RecordSet(
        name=name,
        format=file_format,
        kind=kind,
        records=records,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        columns=sorted(columns),
    )


def storable_text(text: str) -> bool:
    """Whether a database can store the text: Postgres rejects NUL characters and
    unpaired surrogates (which no UTF-8 encoding has) in text and JSON columns."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_column_names(names: Iterable[str], file: str, line: int | None) -> None:
    """Column names are stored with the dataset's row; its values only in the file."""
    for column in sorted(names):
        if not storable_text(column):
            raise DataValidationError(
                f"column name: {UNSTORABLE_TEXT}",
                file=file,
                line=line,
                field=column.encode("unicode_escape").decode(),
            )


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
                raise _undecodable_json(exc, name, line, field="perturbed_answer") from None
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


def _jsonl_rows(data: bytes, name: str) -> Iterator[tuple[int, Any]]:
    text = _decode(data, name)
    if text.lstrip().startswith("["):
        yield from _json_array_rows(text, name)
        return
    # Split on newlines only: str.splitlines would also split inside strings holding
    # U+2028 or other characters JSON allows unescaped.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(
                f"invalid JSON: {exc.msg} at column {exc.colno}", file=name, line=line_no
            ) from None
        except (RecursionError, ValueError) as exc:
            raise _undecodable_json(exc, name, line_no) from None
        yield line_no, row


def _json_array_rows(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """A JSON array file (.json): rows are numbered by position."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataValidationError(
            f"invalid JSON: {exc.msg} at column {exc.colno}", file=name, line=exc.lineno
        ) from None
    except (RecursionError, ValueError) as exc:
        raise _undecodable_json(exc, name, None) from None
    yield from enumerate(items, start=1)


def _undecodable_json(
    exc: Exception, name: str, line: int, field: str | None = None
) -> DataValidationError:
    """What json rejects besides syntax: nesting deeper than the recursion limit, and
    integers longer than int() converts (a guard against quadratic-time parsing)."""
    if isinstance(exc, RecursionError):
        reason = "nested too deeply"
    else:
        reason = f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return DataValidationError(f"invalid JSON: {reason}", file=name, line=line, field=field)


def _csv_rows(data: bytes, name: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(_decode(data, name), newline=""))
    try:
        if not reader.fieldnames:
            return
        _check_column_names(reader.fieldnames, name, line=1)
        for row in reader:
            if None in row:
                raise DataValidationError(
                    "more cells than header columns", file=name, line=reader.line_num
                )
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataValidationError(f"invalid CSV: {exc}", file=name, line=reader.line_num) from None


# csv's default cell limit (128 KiB) rejects long documents in raw-text sets. It is one
# setting per process; the upload limit already bounds every file, so lift it once.
csv.field_size_limit(2**31 - 1)


def _parquet_rows(data: bytes, name: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        names = table.column_names
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: non-UTF-8 names
        raise DataValidationError(f"invalid Parquet: {exc}", file=name) from None
    _check_column_names(names, name, line=None)
    columns = [
        _parquet_values(column, column_name, name)
        for column_name, column in zip(names, table.columns)
    ]
    for index in range(table.num_rows):
        yield index + 1, {column_name: values[index] for column_name, values in zip(names, columns)}


def _parquet_values(column, column_name: str, name: str) -> list[Any]:
    """A column as Python values; a value Python cannot hold (a date past year 9999, a
    nanosecond timestamp, non-UTF-8 text, an unknown time zone) is an error at its row."""
    import pyarrow as pa

    conversion_errors = (pa.ArrowException, ValueError, OverflowError, LookupError)
    values: list[Any] = []
    for chunk in column.chunks:
        try:
            values.extend(chunk.to_pylist())
        except conversion_errors as exc:
            row = len(values) + 1
            for offset in range(len(chunk)):
                try:
                    chunk[offset].as_py()
                except conversion_errors:
                    row = len(values) + offset + 1
                    break
            raise DataValidationError(
                f"cannot read the value: {exc}", file=name, line=row, field=column_name
            ) from None
    return values


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"not UTF-8 text (byte {exc.start})", file=name, code="invalid_encoding"
        ) from None
