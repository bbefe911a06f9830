"""Object storage: ``open_store(url)`` picks the backend from the URL scheme."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from core.storage.base import ObjectInfo, ObjectNotFound, ObjectStore
from core.storage.local import LocalStore


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    create_bucket: bool = False,
) -> ObjectStore:
    """``file:///abs/path`` (or a plain path) -> LocalStore; ``s3://bucket/prefix`` -> S3Store.

    Only the service's own store creates its bucket (``create_bucket``); every other
    store is opened as it is, so reading a model or a file never creates a bucket with
    the service's credentials."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(url2pathname(parsed.path)) if parsed.scheme else Path(url))
    if parsed.scheme == "s3":
        from core.storage.s3 import S3Store

        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            create_bucket=create_bucket,
        )
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")


def store_from_settings(settings=None) -> ObjectStore:
    from core.settings import get_settings

    settings = settings or get_settings()
    return open_store(
        settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        create_bucket=True,
    )


__all__ = [
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "LocalStore",
    "open_store",
    "store_from_settings",
]
