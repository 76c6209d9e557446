"""Recent predictions, so that a page or a report can refer to one by id: in the store under
``recent/<id>/`` (any replica finds them) with this replica's LRU in front."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from model.calibration import Label
from storage import NotFound, ObjectStore
from storage.layout import recent_heatmap_key, recent_image_key, recent_record_key


@dataclass(frozen=True)
class RecentPrediction:
    id: str
    image: bytes
    image_ext: str
    label: Label
    probability: float
    model_version: str
    created_at: float  # unix time
    filename: str | None = None


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


def prediction_objects(item: RecentPrediction) -> list[tuple[str, bytes]]:
    """The (key, bytes) a prediction is stored as: its image and its record. Written in any order
    (or at once): a reader treats a record without its image as absent."""
    record: dict[str, Any] = {
        "id": item.id,
        "image_ext": item.image_ext,
        "label": item.label,
        "probability": item.probability,
        "model_version": item.model_version,
        "created_at": item.created_at,
        "filename": item.filename,
    }
    return [
        (recent_image_key(item.id, item.image_ext), item.image),
        (recent_record_key(item.id), json.dumps(record).encode()),
    ]


def save_prediction(store: ObjectStore, item: RecentPrediction) -> None:
    for key, data in prediction_objects(item):
        store.put(key, data)


def load_prediction(store: ObjectStore, prediction_id: str) -> RecentPrediction | None:
    """The prediction as another replica saved it; None when it is not (or no longer) there."""
    try:
        record = json.loads(store.get(recent_record_key(prediction_id)))
        image = store.get(recent_image_key(prediction_id, record["image_ext"]))
    except NotFound:
        return None
    return RecentPrediction(
        id=prediction_id,
        image=image,
        image_ext=record["image_ext"],
        label=record["label"],
        probability=float(record["probability"]),
        model_version=record["model_version"],
        created_at=float(record["created_at"]),
        filename=record.get("filename"),
    )


def load_heatmap(store: ObjectStore, prediction_id: str, model_version: str) -> bytes | None:
    try:
        return store.get(recent_heatmap_key(prediction_id, model_version))
    except NotFound:
        return None


def save_heatmap(store: ObjectStore, prediction_id: str, model_version: str, png: bytes) -> None:
    store.put(recent_heatmap_key(prediction_id, model_version), png)
