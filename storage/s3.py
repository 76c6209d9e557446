"""S3 (AWS, MinIO, moto's server) through boto3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storage.base import NotFound, ObjectStore, PreconditionFailed, StoreUnavailable, check_key


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``. Conditional puts use S3's IfMatch / IfNoneMatch."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: Any = None,
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with _translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = response["Body"].read()
        return body, str(response["ETag"])

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        kwargs: dict[str, Any] = {}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        with _translated(key):
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **kwargs)
        return str(response["ETag"])

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]

    def delete(self, key: str) -> None:
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with _translated(key):
            self.client.download_file(self.bucket, self._key(key), str(tmp))
        tmp.replace(path)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (MinIO / moto / a fresh account)."""
        with _translated(self.bucket):
            existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
            if self.bucket not in existing:
                self.client.create_bucket(Bucket=self.bucket)


@contextmanager
def _translated(key: str) -> Iterator[None]:
    """Map botocore errors onto the store's error types."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, EndpointConnectionError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            raise NotFound(key) from exc
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            raise PreconditionFailed(f"{key}: {error.get('Message', code)}") from exc
        raise
    except (EndpointConnectionError, ConnectionError) as exc:
        raise StoreUnavailable(f"object store unreachable: {exc}") from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(f"object store error: {exc}") from exc
