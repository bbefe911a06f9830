from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from core.db.tables import Dataset


class DatasetObject(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    filename: str
    format: Literal["jsonl", "csv", "parquet"]
    kind: Literal["qa", "completion", "text"]
    record_count: int
    size_bytes: int
    sha256: str
    columns: list[str]
    has_truth_ratio_fields: bool
    created_at: datetime
    #: stored encrypted under a key of its own (False: stored before encryption, or shredded)
    encrypted: bool
    #: when its key and file were destroyed; the sha256 and counts stay
    shredded_at: datetime | None = None

    @classmethod
    def from_row(cls, dataset: Dataset) -> DatasetObject:
        return cls(
            id=dataset.id,
            name=dataset.name,
            filename=dataset.filename,
            format=dataset.format,
            kind=dataset.kind,
            record_count=dataset.record_count,
            size_bytes=dataset.size_bytes,
            sha256=dataset.sha256,
            columns=dataset.columns,
            has_truth_ratio_fields=dataset.has_truth_ratio_fields,
            created_at=dataset.created_at,
            encrypted=dataset.wrapped_key is not None,
            shredded_at=dataset.shredded_at,
        )
