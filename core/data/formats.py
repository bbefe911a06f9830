"""Rows out of JSONL, JSON-array, CSV and Parquet files, streamed.

Each reader takes a binary file handle and yields ``(line, row)`` one row at a time,
holding at most one line (JSONL), one record (CSV), one array element (JSON) or one
small batch of rows (Parquet) in memory, and charging every row to a
:class:`~core.data.limits.DataBudget`, so a file that decodes to gigabytes is refused
at its limit instead of being read whole. Errors name the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from core.data.limits import DataBudget
from core.errors import DataValidationError

UNSTORABLE_TEXT = "text must not contain NUL characters or unpaired surrogates"
BOM = b"\xef\xbb\xbf"
WHITESPACE = " \t\r\n"
#: JSON arrays are read in chunks of at least this many characters (doubling while one
#: element is larger, so a large element costs linear time).
ARRAY_CHUNK_CHARS = 1 << 16
#: Parquet batches hold at most this many bytes of values at the cell limit, and
#: between 16 and 1024 rows.
PARQUET_BATCH_BYTES = 64 << 20

# csv's own cell limit (128 KiB) would reject long raw-text documents; the record size
# is bounded by the line limit instead (csv_rows), so lift it once for the process.
csv.field_size_limit(2**31 - 1)


def jsonl_rows(handle: BinaryIO, name: str, budget: DataBudget) -> Iterator[tuple[int, Any]]:
    """One JSON value per line; a file whose first non-blank character is ``[`` is a
    JSON array instead (rows numbered by position, errors by line)."""
    if _first_character(handle) == b"[":
        stream = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
        try:
            yield from _json_array_rows(stream, name, budget)
        finally:
            stream.detach()  # the caller owns the file; a wrapper would close it
        return
    line_no = 0
    limit = budget.limits.line_bytes
    while raw := handle.readline(limit + 1):
        line_no += 1
        if line_no == 1:
            raw = raw.removeprefix(BOM)
        content = raw.removesuffix(b"\n")
        budget.line(len(content), line_no)  # over the limit: readline stopped mid-line
        budget.decoded(len(raw), line_no)
        text = _decode(content, name, line_no)
        if not text.strip(WHITESPACE):
            continue
        # Split on newlines only: str.splitlines would also split inside strings holding
        # U+2028 or other characters JSON allows unescaped.
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataValidationError(
                f"invalid JSON: {exc.msg} at column {exc.colno}", file=name, line=line_no
            ) from None
        except (RecursionError, ValueError) as exc:
            raise undecodable_json(exc, name, line_no) from None
        yield line_no, row


def _first_character(handle: BinaryIO) -> bytes:
    """The first byte after a BOM and JSON whitespace (b"" for none); the handle is left
    at the start."""
    first = b""
    chunk = handle.read(ARRAY_CHUNK_CHARS).removeprefix(BOM)
    while chunk and not first:
        first = chunk.lstrip(WHITESPACE.encode())[:1]
        chunk = handle.read(ARRAY_CHUNK_CHARS)
    handle.seek(0)
    return first


def _json_array_rows(
    stream: io.TextIOBase, name: str, budget: DataBudget
) -> Iterator[tuple[int, Any]]:
    """The elements of a JSON array, decoded one at a time from a growing buffer.

    ``json.JSONDecoder.raw_decode`` parses one value at an offset; an element that
    does not parse yet may only be incomplete, so the buffer grows until it parses, the
    file ends, or the element passes the line limit (one element is one record)."""
    source = _TextBuffer(stream, name)
    decoder = json.JSONDecoder()
    source.skip_whitespace()
    if source.peek() != "[":
        raise source.error("invalid JSON: expected '['")
    source.position += 1
    index = 0
    while True:
        source.skip_whitespace()
        char = source.peek()
        if char == "]" and index == 0:
            break
        if index > 0:
            if char == "]":
                break
            if char != ",":
                raise source.error("invalid JSON: expected ',' or ']' between elements")
            source.position += 1
            source.skip_whitespace()
        if source.peek() == "":
            raise source.error("invalid JSON: the array is not closed")
        start = source.position
        while True:  # one element
            try:
                value, end = decoder.raw_decode(source.buffer, start)
                if end < len(source.buffer) or source.eof:
                    break
            except json.JSONDecodeError as exc:
                if source.eof:
                    raise source.error(f"invalid JSON: {exc.msg}", at=exc.pos) from None
            except (RecursionError, ValueError) as exc:
                raise undecodable_json(exc, name, source.line_at(start)) from None
            # Incomplete, or complete only up to the buffer's end (a number may go on).
            size = len(source.buffer) - start
            budget.line(size, source.line_at(start))
            start = source.read_more(keep_from=start, at_least=size)
        line = source.line_at(start)
        budget.line(end - start, line)
        budget.decoded(end - start, line)
        index += 1
        yield index, value
        source.position = end
    source.position += 1
    source.skip_whitespace()
    if source.peek() != "":
        raise source.error("invalid JSON: extra data after the array")


class _TextBuffer:
    """A window on a text stream: the unread rest of what was read, a position in it,
    and line numbers counted once per character."""

    def __init__(self, stream: io.TextIOBase, name: str):
        self.buffer, self.stream, self.name = "", stream, name
        self.position = 0
        self.eof = False
        self._counted_to = 0  # newlines before this offset are in _lines
        self._lines = 0

    def line_at(self, offset: int) -> int:
        if offset > self._counted_to:
            self._lines += self.buffer.count("\n", self._counted_to, offset)
            self._counted_to = offset
        return self._lines + 1

    def read_more(self, *, keep_from: int, at_least: int = ARRAY_CHUNK_CHARS) -> int:
        """Drop what lies before ``keep_from``, append a chunk; returns where
        ``keep_from`` now is (0)."""
        self.line_at(keep_from)
        self.buffer = self.buffer[keep_from:]
        self._counted_to -= keep_from
        self.position -= keep_from
        try:
            chunk = self.stream.read(max(at_least, ARRAY_CHUNK_CHARS))
        except UnicodeDecodeError:
            raise self.error(
                "not UTF-8 text", at=len(self.buffer), code="invalid_encoding"
            ) from None
        self.eof = not chunk
        self.buffer += chunk
        return 0

    def peek(self) -> str:
        """The character at the position ('' at the end of the file), reading on."""
        while self.position >= len(self.buffer) and not self.eof:
            self.read_more(keep_from=self.position)
        return self.buffer[self.position] if self.position < len(self.buffer) else ""

    def skip_whitespace(self) -> None:
        while self.peek() and self.buffer[self.position] in WHITESPACE:
            self.position += 1

    def error(self, message: str, *, at: int | None = None, code: str | None = None):
        line = self.line_at(self.position if at is None else at)
        return DataValidationError(message, file=self.name, line=line, code=code)


def csv_rows(handle: BinaryIO, name: str, budget: DataBudget) -> Iterator[tuple[int, Any]]:
    """Rows as dicts keyed by the header. The csv module pulls physical lines one at a
    time; a record (its lines together: quoted cells may span several) is bounded by
    the line limit before the module ever holds it."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    limit = budget.limits.line_bytes
    record_bytes = 0
    physical_line = 0

    def lines() -> Iterator[str]:
        nonlocal record_bytes, physical_line
        while True:
            try:
                line = text.readline(limit + 1)
            except UnicodeDecodeError as exc:
                raise DataValidationError(
                    f"not UTF-8 text (byte {exc.start} of a line)",
                    file=name,
                    line=physical_line + 1,
                    code="invalid_encoding",
                ) from None
            if not line:
                return
            physical_line += 1
            size = len(line.encode("utf-8", "surrogatepass"))
            record_bytes += size
            budget.line(record_bytes, physical_line)
            budget.decoded(size, physical_line)
            yield line

    reader = csv.DictReader(lines())
    try:
        if not reader.fieldnames:
            return
        check_column_names(reader.fieldnames, name, line=1)
        record_bytes = 0
        for row in reader:
            record_bytes = 0  # the next record's lines are read after this one is used
            if None in row:
                raise DataValidationError(
                    "more cells than header columns", file=name, line=reader.line_num
                )
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataValidationError(f"invalid CSV: {exc}", file=name, line=reader.line_num) from None
    finally:
        text.detach()  # the caller owns the file; a wrapper would close it


def parquet_rows(handle: BinaryIO, name: str, budget: DataBudget) -> Iterator[tuple[int, Any]]:
    """Rows decoded a small batch at a time (``ParquetFile.iter_batches``). The footer's
    row count and uncompressed sizes are checked before any value is decoded; values
    that decompress further (dictionary pages repeat one long value for every row) are
    charged batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    unreadable = (pa.ArrowException, OSError, ValueError)  # ValueError: non-UTF-8 names
    try:
        parquet = pq.ParquetFile(handle)
        metadata = parquet.metadata
        names = parquet.schema_arrow.names
        declared = max(
            sum(group.total_byte_size for group in _row_groups(metadata)),
            sum(
                group.column(i).total_uncompressed_size
                for group in _row_groups(metadata)
                for i in range(group.num_columns)
            ),
        )
    except unreadable as exc:
        raise DataValidationError(f"invalid Parquet: {exc}", file=name) from None
    budget.expect_records(metadata.num_rows)
    budget.expect_decoded(declared)
    check_column_names(names, name, line=None)
    batch_rows = max(16, min(1024, PARQUET_BATCH_BYTES // budget.limits.cell_bytes))
    first_row = 1
    batches = parquet.iter_batches(batch_size=batch_rows)
    while True:
        try:
            batch = next(batches, None)
        except unreadable as exc:
            raise DataValidationError(
                f"invalid Parquet: {exc}", file=name, line=first_row
            ) from None
        if batch is None:
            return
        budget.decoded(batch.nbytes, first_row)
        columns = [
            _parquet_values(batch.column(i), column_name, name, first_row)
            for i, column_name in enumerate(names)
        ]
        for offset in range(batch.num_rows):
            yield (
                first_row + offset,
                {column_name: values[offset] for column_name, values in zip(names, columns)},
            )
        first_row += batch.num_rows


def _row_groups(metadata):
    return (metadata.row_group(i) for i in range(metadata.num_row_groups))


def _parquet_values(column, column_name: str, name: str, first_row: int) -> list[Any]:
    """A column of a batch as Python values; a value Python cannot hold (a date past year
    9999, a nanosecond timestamp, non-UTF-8 text, an unknown time zone) is an error at
    its row."""
    import pyarrow as pa

    conversion_errors = (pa.ArrowException, ValueError, OverflowError, LookupError)
    try:
        return column.to_pylist()
    except conversion_errors as exc:
        row = first_row
        for offset in range(len(column)):
            try:
                column[offset].as_py()
            except conversion_errors:
                row = first_row + offset
                break
        raise DataValidationError(
            f"cannot read the value: {exc}", file=name, line=row, field=column_name
        ) from None


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


def check_column_names(names: Iterable[str], file: str, line: int | None) -> None:
    """Column names are stored with the dataset's row; its values only in the file."""
    for column in sorted(names):
        if not storable_text(column):
            raise DataValidationError(
                f"column name: {UNSTORABLE_TEXT}",
                file=file,
                line=line,
                field=column.encode("unicode_escape").decode(),
            )


def undecodable_json(
    exc: Exception, name: str, line: int | None, field: str | None = None
) -> DataValidationError:
    """What json rejects besides syntax: nesting deeper than the recursion limit, and
    integers longer than int() converts (a guard against quadratic-time parsing)."""
    if isinstance(exc, RecursionError):
        reason = "nested too deeply"
    else:
        reason = f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return DataValidationError(f"invalid JSON: {reason}", file=name, line=line, field=field)


def _decode(data: bytes, name: str, line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"not UTF-8 text (byte {exc.start} of the line)",
            file=name,
            line=line,
            code="invalid_encoding",
        ) from None


ROW_READERS = {"jsonl": jsonl_rows, "csv": csv_rows, "parquet": parquet_rows}
