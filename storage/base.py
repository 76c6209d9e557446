"""The object store interface shared by every part of aidetect."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path


class StoreError(Exception):
    """Base class of object store errors."""


class NotFound(StoreError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "not found"


class PreconditionFailed(StoreError):
    """A conditional put lost: the object changed (or exists) since it was read."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (network, endpoint down)."""


class ObjectStore(abc.ABC):
    """Keys are '/'-separated relative paths; values are bytes. Writes are atomic."""

    url: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises NotFound."""

    @abc.abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its entity tag (for a later conditional put)."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write atomically and return the new entity tag.

        ``if_match``: only if the current object has this tag; ``if_none_match``: only if
        the key does not exist yet. A lost condition raises PreconditionFailed.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the key exists."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with ``prefix``, in lexicographic order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the key (no error if it is absent)."""

    def download(self, key: str, path: Path) -> None:
        """Write the object to a local file atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.get(key))
        tmp.replace(path)

    def upload(self, path: Path, key: str, *, if_none_match: bool = False) -> str:
        """Store a local file under ``key``."""
        return self.put(key, path.read_bytes(), if_none_match=if_none_match)


def check_key(key: str) -> str:
    """Refuse keys that could escape the store or are ambiguous."""
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key: {key!r}")
    return key
