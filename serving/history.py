"""Each browser's past predictions, kept server-side so a reload shows them: one small object
per item under ``history/<sha256 of the cookie>/<prediction id>.json`` (any replica lists them),
and this replica's memory as the fallback while the store is down.

A browser is known by a random cookie (``aidetect_browser``), never by anything personal.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass

from model.calibration import Label
from storage import NotFound, ObjectStore
from storage.layout import history_key, history_prefix

COOKIE = "aidetect_browser"
PER_BROWSER = 50


@dataclass
class HistoryItem:
    prediction_id: str
    label: Label
    probability: float
    model_version: str
    filename: str | None
    at: float
    feedback_id: str | None = None


class History:
    def __init__(self, per_browser: int = PER_BROWSER, max_browsers: int = 10_000):
        self.per_browser = per_browser
        self.max_browsers = max_browsers
        self._items: OrderedDict[str, deque[HistoryItem]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, browser: str, item: HistoryItem) -> None:
        with self._lock:
            items = self._items.pop(browser, None) or deque(maxlen=self.per_browser)
            items.appendleft(item)
            self._items[browser] = items
            while len(self._items) > self.max_browsers:
                self._items.popitem(last=False)

    def list(self, browser: str) -> list[HistoryItem]:
        with self._lock:
            return list(self._items.get(browser, ()))

    def clear(self, browser: str) -> int:
        with self._lock:
            return len(self._items.pop(browser, ()))

    def link_feedback(self, browser: str, prediction_id: str, feedback_id: str) -> None:
        with self._lock:
            for item in self._items.get(browser, ()):
                if item.prediction_id == prediction_id:
                    item.feedback_id = feedback_id


def item_object(browser: str, item: HistoryItem) -> tuple[str, bytes]:
    """The (key, bytes) a history item is stored as."""
    return history_key(browser, item.prediction_id), json.dumps(asdict(item)).encode()


def save_item(store: ObjectStore, browser: str, item: HistoryItem) -> None:
    store.put(*item_object(browser, item))


def load_items(store: ObjectStore, browser: str, limit: int = PER_BROWSER) -> list[HistoryItem]:
    """The browser's newest ``limit`` items, newest first (keys sort by time: ids start with it)."""
    keys = list(store.list(history_prefix(browser)))[-limit:]
    items = []
    for key in reversed(keys):
        try:
            items.append(HistoryItem(**json.loads(store.get(key))))
        except NotFound:  # swept or cleared between the listing and the read
            continue
    return items


def delete_items(store: ObjectStore, browser: str) -> int:
    keys = list(store.list(history_prefix(browser)))
    for key in keys:
        store.delete(key)
    return len(keys)


def link_feedback(store: ObjectStore, browser: str, prediction_id: str, feedback_id: str) -> bool:
    """Mark the browser's item for ``prediction_id`` as reported (a rewrite); False if it has none."""
    key = history_key(browser, prediction_id)
    try:
        item = HistoryItem(**json.loads(store.get(key)))
    except NotFound:
        return False
    item.feedback_id = feedback_id
    store.put(*item_object(browser, item))
    return True


def now() -> float:
    return time.time()
