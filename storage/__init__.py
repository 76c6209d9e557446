"""The object store: one interface, a local-folder and an S3 implementation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from storage.base import NotFound, ObjectStore, PreconditionFailed, StoreError, StoreUnavailable
from storage.local import LocalStore

if TYPE_CHECKING:
    from aidetect.settings import Settings

__all__ = [
    "LocalStore",
    "NotFound",
    "ObjectStore",
    "PreconditionFailed",
    "StoreError",
    "StoreUnavailable",
    "configured_store",
    "open_store",
]


def open_store(url: str, *, endpoint_url: str | None = None, region: str = "us-east-1") -> ObjectStore:
    """A store from a URL: a folder path, ``file:///path`` or ``s3://bucket/prefix``."""
    if url.startswith("s3://"):
        from storage.s3 import S3Store

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"s3 URL needs a bucket: {url!r}")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url, region=region)
    if url.startswith("file://"):
        return LocalStore(Path(url[len("file://") :]))
    if "://" in url:
        raise ValueError(f"unsupported store URL {url!r}: use a folder, file:// or s3://")
    return LocalStore(Path(url))


def configured_store(settings: Settings, url: str | None = None) -> ObjectStore:
    """The store the settings name (or the one at ``url``, with the same S3 settings)."""
    url = url or settings.resolved_store_url
    return open_store(url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
