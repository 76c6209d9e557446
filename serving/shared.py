"""What every replica can answer for: recent predictions (image, verdict, heatmaps) and each
browser's history live in the store (``recent/``, ``history/``), with this replica's memory in
front as a cache (predictions and heatmaps never change) and as the fallback while the store is
down. A prediction is answered even when its store write fails; it is then only on this replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from serving import history as shared_history
from serving.history import HistoryItem
from serving.recent import RecentPrediction, load_heatmap, load_prediction, prediction_objects, save_heatmap
from storage import ObjectStore, StoreError
from storage.layout import (
    HISTORY,
    RECENT,
    is_prediction_id,
    parse_short_lived_key,
    prediction_id_time,
    recent_record_key,
)

if TYPE_CHECKING:
    from serving.state import ServingState

log = logging.getLogger("aidetect.serving")


class StoreWrites:
    """After a failed write on the predict path, skip the store for ``pause_seconds``: an outage
    then costs one slow request (the client's retries), not one per prediction."""

    def __init__(self, pause_seconds: float = 10.0):
        self.pause_seconds = pause_seconds
        self._paused_until = 0.0

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def failed(self) -> None:
        self._paused_until = time.monotonic() + self.pause_seconds

    def succeeded(self) -> None:
        self._paused_until = 0.0


async def remember(state: ServingState, item: RecentPrediction, browser: str | None) -> None:
    """Keep a new prediction (and the browser's history item) here and in the store, before it is answered."""
    state.recent.add(item)
    entry = None
    if browser is not None:
        entry = HistoryItem(item.id, item.label, item.probability, item.model_version, item.filename, item.created_at)
        state.history.add(browser, entry)
    if state.store_writes.paused:
        state.metrics.recent_writes.labels("skipped").inc()
        return
    # all at once: a store round trip (~20-40 ms on S3) is paid once, not three times
    objects = prediction_objects(item)
    if browser is not None and entry is not None:
        objects.append(shared_history.item_object(browser, entry))
    writes = [asyncio.to_thread(state.store.put, key, data) for key, data in objects]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if not failures:
        state.store_writes.succeeded()
        state.metrics.recent_writes.labels("written").inc()
        return
    state.store_writes.failed()
    state.metrics.recent_writes.labels("failed").inc()
    if all(isinstance(f, StoreError) for f in failures):
        log.warning("prediction %s kept on this replica only: %s", item.id, failures[0])
    else:
        log.error("prediction %s kept on this replica only", item.id, exc_info=failures[0])


async def find(state: ServingState, prediction_id: str) -> RecentPrediction | None:
    """The prediction from this replica's memory, else from the store; None when neither has it.
    Raises StoreError when only the store could tell."""
    known = state.recent.get(prediction_id)
    if known is not None or not is_prediction_id(prediction_id):
        return known
    found = await asyncio.to_thread(load_prediction, state.store, prediction_id)
    if found is not None:
        state.recent.add(found)
    return found


async def stored_heatmap(state: ServingState, prediction_id: str, model_version: str) -> bytes | None:
    """A heatmap already drawn (here, or by another replica) for this prediction and model version."""
    png = state.heatmaps.get((prediction_id, model_version))
    if png is not None or not is_prediction_id(prediction_id):
        return png
    try:
        png = await asyncio.to_thread(load_heatmap, state.store, prediction_id, model_version)
    except StoreError as exc:  # drawn here instead
        log.warning("stored heatmap of %s unreadable: %s", prediction_id, exc)
        return None
    if png is not None:
        state.heatmaps.put((prediction_id, model_version), png)
    return png


async def keep_heatmap(state: ServingState, prediction_id: str, model_version: str, png: bytes) -> None:
    state.heatmaps.put((prediction_id, model_version), png)
    try:
        await asyncio.to_thread(save_heatmap, state.store, prediction_id, model_version, png)
    except StoreError as exc:  # drawn again by the next replica asked; nothing is lost
        log.warning("heatmap of %s not stored: %s", prediction_id, exc)


async def history(state: ServingState, browser: str) -> list[HistoryItem]:
    """The browser's items, newest first: the store's, or this replica's while the store is down."""
    try:
        return await asyncio.to_thread(shared_history.load_items, state.store, browser, state.history.per_browser)
    except StoreError as exc:
        log.warning("history from this replica's memory only: %s", exc)
        return state.history.list(browser)


async def images_available(state: ServingState, prediction_ids: list[str]) -> list[bool]:
    """Whether each prediction's image can still be shown (this replica's memory or the store)."""

    def check(prediction_id: str) -> bool:
        if state.recent.get(prediction_id) is not None:
            return True
        try:
            return is_prediction_id(prediction_id) and state.store.exists(recent_record_key(prediction_id))
        except StoreError:
            return False

    return list(await asyncio.gather(*(asyncio.to_thread(check, p) for p in prediction_ids)))


async def forget(state: ServingState, browser: str) -> int:
    """Delete the browser's history here and in the store (StoreError if the store cannot)."""
    local = state.history.clear(browser)
    stored = await asyncio.to_thread(shared_history.delete_items, state.store, browser)
    return max(local, stored)


async def link_feedback(state: ServingState, browser: str, prediction_id: str, feedback_id: str) -> None:
    state.history.link_feedback(browser, prediction_id, feedback_id)
    try:
        await asyncio.to_thread(shared_history.link_feedback, state.store, browser, prediction_id, feedback_id)
    except StoreError as exc:  # the report itself is saved (or in the outbox); only the mark is missing
        log.warning("feedback %s not marked in the stored history: %s", feedback_id, exc)


def sweep(store: ObjectStore, retention: timedelta, now: datetime) -> int:
    """Delete ``recent/`` and ``history/`` keys of predictions made before ``now - retention``;
    returns how many. Idempotent, so every replica may sweep.

    ``recent/`` lists oldest first (ids start with their time): the walk stops at the first
    prediction still kept. ``history/`` is listed whole (one prefix per browser)."""
    cutoff = now - retention
    deleted = 0
    for prefix in (RECENT, HISTORY):
        for key in store.list(prefix):
            try:
                made = prediction_id_time(parse_short_lived_key(key))
            except ValueError:  # not ours: leave it
                continue
            if made >= cutoff:
                if prefix == RECENT:
                    break
                continue
            store.delete(key)
            deleted += 1
    return deleted


def sweep_expired(state: ServingState) -> int:
    """One round of the replica's sweeper (``AIDETECT_RECENT_RETENTION_HOURS``)."""
    deleted = sweep(state.store, timedelta(hours=state.settings.recent_retention_hours), datetime.now(UTC))
    state.metrics.recent_swept.inc(deleted)
    if deleted:
        log.info("swept %d recent/ and history/ keys past their retention", deleted)
    return deleted
