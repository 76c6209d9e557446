"""Recent predictions kept in memory, so that feedback can refer to one by id."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from model.calibration import Label


@dataclass(frozen=True)
class RecentPrediction:
    id: str
    image: bytes
    image_ext: str
    label: Label
    probability: float
    model_version: str


class RecentPredictions:
    """An LRU bounded by count and by total image bytes."""

    def __init__(self, max_items: int, max_bytes: int = 256 * 1024 * 1024):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, RecentPrediction] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: RecentPrediction) -> None:
        if self.max_items == 0 or len(item.image) > self.max_bytes:
            return
        with self._lock:
            self._items[item.id] = item
            self._bytes += len(item.image)
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.image)

    def get(self, prediction_id: str) -> RecentPrediction | None:
        with self._lock:
            return self._items.get(prediction_id)
