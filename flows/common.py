"""Helpers shared by the flows: the store, the policy of every I/O task, datasets by
reference, and the lease that keeps a flow to one run at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task

from aidetect.settings import get_settings
from model.datasets import list_datasets, resolve
from model.imagesets import ImageSet, load_images
from storage import ObjectStore, configured_store
from storage.base import NotFound, PreconditionFailed, StoreError
from storage.layout import lock_key

P = ParamSpec("P")
R = TypeVar("R")


def io_task(fn: Callable[P, R]) -> Task[P, R]:
    """A task that reads or writes the store or the registry.

    Never cached (what it reads changes under it); retried twice, 5 s apart, so that a
    network or store hiccup does not fail a run of hours.
    """
    return task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)(fn)


def store_for(store_url: str | None) -> ObjectStore:
    """The object store named by a flow parameter, or the configured one."""
    return configured_store(get_settings(), store_url)


@io_task
def resolve_datasets(store_url: str | None, datasets: list[str] | None) -> list[str]:
    """``name@version`` for each requested dataset (default: the latest of every dataset)."""
    store = store_for(store_url)
    names = datasets or list(list_datasets(store))
    if not names:
        raise ValueError(f"no datasets in {store.url}: run `aidetect data import` first")
    return ["@".join(resolve(store, ref)) for ref in names]


@io_task
def load_data(store_url: str | None, refs: list[str], split: str, limit: int | None = None) -> ImageSet:
    """One split of the datasets ``refs``, encoded (up to ``limit`` images)."""
    data = load_images(store_for(store_url), refs, split, limit=limit)
    get_run_logger().info("%s: %d images from %s", split, len(data), ", ".join(refs))
    return data


class Busy(RuntimeError):
    """Another run holds the lease."""


@contextmanager
def lease(store: ObjectStore, name: str, *, holder: str, ttl_seconds: float) -> Iterator[None]:
    """Hold ``locks/<name>.json`` for the duration: one run at a time, across machines.

    Taken with a create-only put; a lease older than ``ttl_seconds`` (its holder crashed) is
    taken over with a put conditional on the stale copy's entity tag, so two runs that both
    find it stale cannot both win. Released on exit, also when the body raises.
    """
    key = lock_key(name)
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
