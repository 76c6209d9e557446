"""Dynamic micro-batching: concurrent requests share one onnxruntime run.

Requests decode and resize their image in worker threads, then queue the pixels here. One
collector takes what is queued, waits up to ``max_wait`` for more only while other requests
are still decoding (so a lone request never waits), and runs the batch on a single inference
thread whose onnxruntime session uses all the cores. While one batch runs the next one
gathers, so batches grow with load on their own. Items are grouped by the model they were
queued for: requests that started before a hot swap finish on the old session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from model.inference import OnnxModel

log = logging.getLogger("aidetect.serving")
T = TypeVar("T")


@dataclass
class _Item:
    model: OnnxModel
    pixels: np.ndarray
    future: asyncio.Future[tuple[float, np.ndarray]]


class MicroBatcher:
    def __init__(self, max_batch: int = 16, max_wait: float = 0.002, on_batch: Callable[[int], None] | None = None):
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch  # called with each batch size (metrics)
        self.decoding = 0  # requests between upload and queue: worth waiting for
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():  # nobody will run these now
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(InferenceFailed("the server is shutting down"))
        self._executor.shutdown(wait=True)

    def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the inference thread, between batches (from a thread, not the event loop)."""
        return self._executor.submit(fn).result()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the inference thread, between batches (from the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def score(self, model: OnnxModel, pixels: np.ndarray) -> tuple[float, np.ndarray]:
        """One image's (P(ai) before calibration, embedding)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[tuple[float, np.ndarray]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(model, pixels, future))
        return await future

    async def _collect(self) -> None:
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if self.decoding <= 0 or remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        for items in _by_model(batch):
            await self._run_group(items)

    async def _run_group(self, items: list[_Item]) -> None:
        """One onnxruntime run for the items queued for one model; whatever goes wrong fails
        these requests, never the collector."""
        try:
            pixels = np.stack([item.pixels for item in items])
            loop = asyncio.get_running_loop()
            scores, embeddings = await loop.run_in_executor(self._executor, items[0].model.predict, pixels)
            if len(scores) != len(items) or len(embeddings) != len(items):
                raise InferenceFailed(f"{len(items)} images gave {len(scores)} scores")
            if self.on_batch is not None:
                self.on_batch(len(items))
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed(str(exc)))
            return
        for item, score, embedding in zip(items, scores, embeddings, strict=True):
            if not item.future.done():
                item.future.set_result((float(score), embedding))


def _by_model(batch: list[_Item]) -> list[list[_Item]]:
    """The items still wanted, grouped by the model they were queued for (in queue order)."""
    groups: dict[int, list[_Item]] = {}
    for item in batch:
        if not item.future.cancelled():
            groups.setdefault(id(item.model), []).append(item)
    return list(groups.values())


class InferenceFailed(RuntimeError):
    """onnxruntime failed on a batch."""
