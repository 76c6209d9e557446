"""Everything one serving process holds, built in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from aidetect.settings import Settings
from feedback.outbox import Outbox
from feedback.policy import Policy
from model.features import image_statistics
from serving.batching import MicroBatcher
from serving.history import History
from serving.hotswap import ModelHolder
from serving.metrics import Metrics
from serving.predlog import PredictionLog
from serving.ratelimit import RateLimiter
from serving.recent import RecentPredictions
from serving.replicas import ReplicaFolder
from serving.shadow import shadow_for, shadow_score
from serving.shared import StoreWrites
from storage import ObjectStore
from storage.predictions import PredictionRecord

log = logging.getLogger("aidetect.serving")

T = TypeVar("T")


@dataclass
class ServingState:
    settings: Settings
    store: ObjectStore
    holder: ModelHolder
    recent: RecentPredictions
    batcher: MicroBatcher
    metrics: Metrics
    outbox: Outbox  # feedback accepted while the store is down
    feedback_limiter: RateLimiter
    feedback_policy: Policy
    history: History
    heatmaps: SmallCache = field(default_factory=lambda: SmallCache(64))
    store_writes: StoreWrites = field(default_factory=StoreWrites)  # recent/ and history/ writes (serving.shared)
    predlog: PredictionLog | None = None
    shadow: ModelHolder | None = None
    loader: ThreadPoolExecutor | None = None  # the low-priority model-loader thread
    rng: random.Random = field(default_factory=random.Random)
    shadow_waiting: int = 0  # shadow scores waiting for the inference thread (serving.shadow)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    draining: threading.Event = field(default_factory=threading.Event)  # set on SIGTERM (serving.server)
    replica: ReplicaFolder | None = None  # this replica's folder on the shared volume (serving.replicas)

    def log_prediction(self, record: PredictionRecord, image: Image.Image, data: bytes, pixels: np.ndarray) -> None:
        """Journal the record as answered, finish it off the request path (statistics, shadow score), then buffer it."""
        if self.predlog is None and self.shadow is None:
            return
        if self.predlog is not None:
            self.predlog.answered(record)
        task = asyncio.get_running_loop().create_task(self._complete(record, image, data, pixels))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _complete(self, record: PredictionRecord, image: Image.Image, data: bytes, pixels: np.ndarray) -> None:
        try:
            shadow = shadow_for(self)
            if shadow is not None:
                await shadow_score(self, record, shadow, image, pixels)
            if self.predlog is not None:
                stats = await asyncio.to_thread(image_statistics, image, data)
                for name, value in stats.items():
                    setattr(record, name, value)
        except Exception:  # a log record must never take the server down
            log.exception("could not complete the log record of prediction %s", record.id)
        if self.predlog is not None:  # completed or not: it was answered (and journaled until it is written)
            self.predlog.add(record)


async def in_loader(state: ServingState, fn: Callable[[], T]) -> T:
    """Run model-loading work on the loader thread (or a worker thread if there is none)."""
    if state.loader is None:
        return await asyncio.to_thread(fn)
    return await asyncio.get_running_loop().run_in_executor(state.loader, fn)


class SmallCache:
    """A tiny LRU (heatmaps: each costs ~120 model runs, and a page asks for it more than once)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Any, bytes] = OrderedDict()

    def get(self, key: Any) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: bytes) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def now() -> datetime:
    return datetime.now(UTC)
