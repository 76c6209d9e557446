"""Helpers shared by the flows: the store, the policy of every I/O task, datasets by
reference (the lease that keeps a flow to one run at a time is ``flows.lease``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task

from aidetect.settings import get_settings
from model.datasets import list_datasets, resolve
from model.imagesets import ImageSet, load_images
from storage import ObjectStore, configured_store

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
