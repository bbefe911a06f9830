"""Streaming multipart upload with a hard size limit.

The body is parsed as it arrives and the file part is written to a temporary file;
the limit is enforced on the bytes actually received, so a client that lies in (or
omits) Content-Length still cannot make us store more than ``max_bytes``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from core.errors import InvalidRequest, ObliviateError

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096
# Headers, boundaries and small form fields around the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class FileTooLarge(ObliviateError):
    code = "file_too_large"
    http_status = 413


class InvalidMultipart(ObliviateError):
    code = "invalid_multipart"
    http_status = 400


@dataclass
class Upload:
    path: Path
    filename: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _UploadParser:
    """Collects the ``file`` part into a temp file and small text fields in memory."""

    def __init__(self, max_bytes: int, temp_dir: Path | None):
        self.max_bytes = max_bytes
        self.temp_dir = temp_dir
        self.fields: dict[str, str] = {}
        self.file_handle = None
        self.file_path: Path | None = None
        self.filename: str | None = None
        self.file_size = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._part_name = None
        self._part_is_file = False
        self._field_value = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_name = name
        if name == FILE_FIELD:
            if self.file_handle is not None:
                raise InvalidRequest("send exactly one 'file' part", param=FILE_FIELD)
            self._part_is_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            fd, path = tempfile.mkstemp(prefix="obliviate-upload-", dir=self.temp_dir)
            self.file_path = Path(path)
            self.file_handle = os.fdopen(fd, "wb")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_file:
            self.file_size += end - start
            if self.file_size > self.max_bytes:
                raise FileTooLarge(
                    f"the file is larger than the limit of {self.max_bytes} bytes",
                    param=FILE_FIELD,
                )
            self.file_handle.write(data[start:end])
        elif self._part_name:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"form field {self._part_name!r} exceeds {MAX_FIELD_BYTES} bytes",
                    param=self._part_name,
                )

    def _on_part_end(self) -> None:
        if self._part_is_file:
            self.file_handle.close()
        elif self._part_name:
            self.fields[self._part_name] = self._field_value.decode("utf-8", "replace")

    def cleanup(self) -> None:
        if self.file_handle is not None and not self.file_handle.closed:
            self.file_handle.close()
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


async def receive_upload(request: Request, max_bytes: int, temp_dir: Path | None = None) -> Upload:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidMultipart(
            "send the file as multipart/form-data with a 'file' field", param=FILE_FIELD
        )
    collector = _UploadParser(max_bytes, temp_dir)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MULTIPART_OVERHEAD_BYTES:
                raise FileTooLarge(
                    f"the upload is larger than the limit of {max_bytes} bytes", param=FILE_FIELD
                )
            parser.write(chunk)
        parser.finalize()
    except ObliviateError:
        collector.cleanup()
        raise
    except Exception as exc:  # the parser's own errors: malformed multipart
        collector.cleanup()
        raise InvalidMultipart(f"malformed multipart body: {exc}", param=FILE_FIELD) from None
    if collector.file_path is None or (collector.file_handle and not collector.file_handle.closed):
        collector.cleanup()
        raise InvalidRequest(
            "the upload has no complete 'file' part", param=FILE_FIELD, code="missing_field"
        )
    return Upload(
        path=collector.file_path,
        filename=collector.filename or "",
        size=collector.file_size,
        fields=collector.fields,
    )
