"""How far a dataset file may expand once read: records, decoded bytes, line and cell
sizes. A 92 KB Parquet file can hold gigabytes of repeated text, a CSV a single line of
any length; these limits hold whatever the file's size on the wire.

Each limit is a setting (``OBLIVIATE_MAX_DATASET_RECORDS``, ...) and each has its own
error code, so a client knows which one it met: a 413 naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import DataLimitExceeded


@dataclass(frozen=True)
class DataLimits:
    records: int
    decoded_bytes: int
    line_bytes: int
    cell_bytes: int

    @classmethod
    def from_settings(cls, settings=None) -> DataLimits:
        from core.settings import get_settings

        settings = settings or get_settings()
        return cls(
            records=settings.max_dataset_records,
            decoded_bytes=settings.max_dataset_decoded_bytes,
            line_bytes=settings.max_line_bytes,
            cell_bytes=settings.max_cell_bytes,
        )


class DataBudget:
    """What one file has used of its limits so far; raises when one is exceeded."""

    def __init__(self, limits: DataLimits, name: str):
        self.limits, self.name = limits, name
        self.records = 0
        self.decoded_bytes = 0

    def expect_records(self, count: int) -> None:
        """A count known before reading (Parquet's footer): refuse before decoding."""
        if count > self.limits.records:
            raise self._too_many_records(None)

    def expect_decoded(self, size: int) -> None:
        if size > self.limits.decoded_bytes:
            raise self._decoded_too_large(None)

    def record(self, line: int | None) -> None:
        self.records += 1
        if self.records > self.limits.records:
            raise self._too_many_records(line)

    def decoded(self, size: int, line: int | None) -> None:
        self.decoded_bytes += size
        if self.decoded_bytes > self.limits.decoded_bytes:
            raise self._decoded_too_large(line)

    def line(self, size: int, line: int | None) -> None:
        if size > self.limits.line_bytes:
            raise DataLimitExceeded(
                f"the line is longer than {self.limits.line_bytes} bytes "
                "(OBLIVIATE_MAX_LINE_BYTES)",
                file=self.name,
                line=line,
                code="line_too_large",
            )

    def cells(self, row: dict, line: int | None) -> None:
        """Every text value of a record (list items included) within the cell limit."""
        limit = self.limits.cell_bytes
        for field, value in row.items():
            values = value if isinstance(value, list) else (value,)
            for item in values:
                # A character is 1-4 bytes in UTF-8: encode only when length can't decide.
                if not isinstance(item, str) or len(item) * 4 <= limit:
                    continue
                if len(item) > limit or len(item.encode("utf-8", "surrogatepass")) > limit:
                    raise DataLimitExceeded(
                        f"the value is longer than {limit} bytes (OBLIVIATE_MAX_CELL_BYTES)",
                        file=self.name,
                        line=line,
                        field=str(field),
                        code="cell_too_large",
                    )

    def _too_many_records(self, line: int | None) -> DataLimitExceeded:
        return DataLimitExceeded(
            f"the file holds more than {self.limits.records} records "
            "(OBLIVIATE_MAX_DATASET_RECORDS)",
            file=self.name,
            line=line,
            code="too_many_records",
        )

    def _decoded_too_large(self, line: int | None) -> DataLimitExceeded:
        return DataLimitExceeded(
            f"the records decode to more than {self.limits.decoded_bytes} bytes "
            "(OBLIVIATE_MAX_DATASET_DECODED_BYTES)",
            file=self.name,
            line=line,
            code="decoded_too_large",
        )
