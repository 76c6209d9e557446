"""Helpers shared by the flows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aidetect.settings import get_settings
from storage import ObjectStore, configured_store
from storage.base import NotFound, PreconditionFailed, StoreError
from storage.layout import LOCKS


def store_for(store_url: str | None) -> ObjectStore:
    """The object store named by a flow parameter, or the configured one."""
    return configured_store(get_settings(), store_url)


class Busy(RuntimeError):
    """Another run holds the lease."""


@contextmanager
def lease(store: ObjectStore, name: str, *, holder: str, ttl_seconds: float) -> Iterator[None]:
    """Hold ``locks/<name>.json`` for the duration: one run at a time, across machines.

    Taken with a create-only put; a lease older than ``ttl_seconds`` (its holder crashed) is
    taken over with a put conditional on the stale copy's entity tag, so two runs that both
    find it stale cannot both win. Released on exit, also when the body raises.
    """
    key = f"{LOCKS}{name}.json"
    now = time.time()
    body = json.dumps({"holder": holder, "taken_at": now, "expires_at": now + ttl_seconds}).encode()
    try:
        etag = store.put(key, body, if_none_match=True)
    except PreconditionFailed:
        try:
            data, stale_tag = store.get_with_etag(key)
        except NotFound:  # released in between: try once more
            etag = store.put(key, body, if_none_match=True)
        else:
            current = json.loads(data)
            if float(current.get("expires_at", 0)) > now:
                raise Busy(
                    f"{name} is already running ({current.get('holder')}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(current.get('taken_at', 0)))})"
                ) from None
            etag = store.put(key, body, if_match=stale_tag)
    try:
        yield
    finally:
        try:
            _, current_tag = store.get_with_etag(key)
            if current_tag == etag:
                store.delete(key)
        except StoreError:  # gone or unreachable: it expires on its own
            pass
