"""S3-protocol object store through boto3 (AWS, MinIO, SeaweedFS).

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
profiles, instance roles); the endpoint from ``OBLIVIATE_S3_ENDPOINT_URL``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from core.storage.base import ObjectInfo, ObjectNotFound, ObjectStore

BUCKET_EXISTS_CODES = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


class S3Store(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                # Path-style addressing works with every S3-compatible server.
                s3={"addressing_style": "path"},
            ),
        )
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # Another process (a second API replica starting) created it meanwhile.
            # S3-compatible servers differ in which of the two codes they answer with.
            if exc.response.get("Error", {}).get("Code") not in BUCKET_EXISTS_CODES:
                raise

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _missing(self, exc) -> bool:
        return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to multipart uploads for large checkpoints.
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from None
            raise

    def download_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from None
            raise

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from None
            raise
        return body.iter_chunks(chunk_size)

    def list(self, prefix: str) -> list[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        infos = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                infos.append(ObjectInfo(key=self._strip(item["Key"]), size=item["Size"]))
        return sorted(infos, key=lambda info: info.key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(info.key) for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)
