"""Each browser's past predictions, kept server-side (per replica, in memory) so a reload shows them.

A browser is known by a random cookie (``aidetect_browser``), never by anything personal.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from model.calibration import Label

COOKIE = "aidetect_browser"


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
    def __init__(self, per_browser: int = 50, max_browsers: int = 10_000):
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


def now() -> float:
    return time.time()
