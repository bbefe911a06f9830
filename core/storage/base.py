"""The object-store interface: a flat key space of immutable-ish blobs.

Two backends: a local folder (embedded default) and S3 (AWS, MinIO, SeaweedFS).
Keys use ``/`` separators, e.g. ``jobs/job_x/checkpoints/final/model.safetensors``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectNotFound(KeyError):
    pass


class ObjectStore(abc.ABC):
    #: URL of the store root, e.g. ``file:///srv/store`` or ``s3://bucket/prefix``.
    url: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def download_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object (for HTTP downloads) without holding it in memory."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached (readiness probe)."""

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def upload_folder(self, folder: Path, prefix: str, *, last: str | None = None) -> None:
        """Upload every file under ``folder`` to ``prefix/``; ``last`` (a relative path,
        e.g. the manifest) goes after all others so a reader that sees it sees the rest."""
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        ordered = [p for p in files if p.relative_to(folder).as_posix() != last]
        ordered += [p for p in files if p.relative_to(folder).as_posix() == last]
        for path in ordered:
            self.put_file(f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}", path)

    def download_prefix(self, prefix: str, folder: Path) -> list[Path]:
        prefix = prefix.rstrip("/") + "/"
        paths = []
        for info in self.list(prefix):
            target = folder / info.key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.download_file(info.key, target)
            paths.append(target)
        if not paths:
            raise ObjectNotFound(prefix)
        return paths
