"""The FastAPI application factory. Nothing is built at import; models load in lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from aidetect.settings import Settings, get_settings
from feedback.outbox import Outbox
from feedback.policy import configured_policy
from model.inference import share_thread_pool
from serving.batching import MicroBatcher
from serving.drift_status import DriftStatus
from serving.history import History
from serving.hotswap import ModelHolder
from serving.metrics import Metrics, RequestMetricsMiddleware
from serving.predlog import PredictionLog
from serving.ratelimit import RateLimiter
from serving.recent import RecentPredictions
from serving.routes import router
from serving.state import ServingState
from storage import ObjectStore, StoreError, configured_store

log = logging.getLogger("aidetect.serving")
STATIC = Path(__file__).parent / "static"


LOADER_NICE = 19


def _lower_priority() -> None:
    """The model-loader thread (download, sha256, metadata) yields the cores to live requests.

    A nice value, not SCHED_IDLE: an idle-class thread can wait forever on a saturated replica,
    which would then never pick up a new model. Building the session and running the checks
    happen on the inference thread, between live batches (see ``ModelHolder.runner``).
    """
    with contextlib.suppress(AttributeError, OSError):  # per thread on Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICE)


def model_loader() -> ThreadPoolExecutor:
    """One low-priority thread that downloads, verifies and builds new models (never a request)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader", initializer=_lower_priority)


async def _follow_alias(holders: list[ModelHolder], interval: float, loader: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    while True:
        for holder in holders:
            try:
                await loop.run_in_executor(loader, holder.release_memory)  # of the model swapped out last time
                await loop.run_in_executor(loader, holder.refresh)
            except StoreError as exc:
                holder.store_errors += 1
                log.warning("alias %s: check failed (store unreachable?): %s", holder.alias, exc)
            except Exception:  # keep following whatever one check hit
                log.exception("alias %s: check failed", holder.alias)
        await asyncio.sleep(interval)


async def _follow_drift(drift: DriftStatus, store: ObjectStore, interval: float, loader: ThreadPoolExecutor) -> None:
    """The latest drift report, for /metrics (serving/drift_status.py)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(loader, drift.refresh, store)
        except StoreError as exc:
            drift.errors += 1
            log.warning("latest drift report: store unreachable: %s", exc)
        except Exception:  # keep following
            drift.errors += 1
            log.exception("latest drift report: read failed")
        await asyncio.sleep(interval)


async def _flush_outbox(outbox: Outbox, store: ObjectStore, interval: float) -> None:
    """Send feedback queued while the store was down (also what an earlier run left behind)."""
    while True:
        if outbox.pending():
            try:
                await asyncio.to_thread(outbox.flush, store)
            except Exception:  # keep trying; entries stay on disk
                log.exception("feedback outbox flush failed")
        await asyncio.sleep(interval)


async def _start_holder(holder: ModelHolder, loader: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(loader, holder.refresh)
    except StoreError as exc:
        log.warning("object store unreachable at start (alias %s): %s", holder.alias, exc)
    if holder.current is None:
        await loop.run_in_executor(loader, holder.load_cached)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; raises ``InsecureSettings`` (serving does not start) on a placeholder admin token
    outside the embedded default (see ``Settings.check_serving_security``)."""
    settings = settings or get_settings()
    settings.check_serving_security()
    metrics = Metrics()
    draining = threading.Event()  # set by serving.server on SIGTERM, before the lifespan ends

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = configured_store(settings)
        if settings.ort_shared_pool:
            share_thread_pool(settings.ort_threads)
        loader = model_loader()
        models_dir = settings.cache_dir / "models"
        batcher = MicroBatcher(
            settings.batch_max_size, settings.batch_max_wait_ms / 1000, on_batch=metrics.batch_size.observe
        )
        await batcher.start()

        def follow(alias: str) -> ModelHolder:
            return ModelHolder(
                store,
                models_dir / alias,
                alias=alias,
                threads=settings.ort_threads,
                variant=settings.model_variant,
                runner=batcher.run_blocking,
            )

        holder = follow(settings.model_alias)
        shadow = follow(settings.shadow_alias) if settings.shadow_alias else None
        holders = [holder] if shadow is None else [holder, shadow]
        for each in holders:
            await _start_holder(each, loader)
        predlog = None
        if settings.prediction_log:
            predlog = PredictionLog(
                store,
                settings.cache_dir / "spool" / "predictions",
                flush_seconds=settings.log_flush_seconds,
                batch_size=settings.log_batch_size,
            )
        outbox = Outbox(settings.cache_dir / "outbox" / "feedback")
        state = ServingState(
            settings=settings,
            store=store,
            holder=holder,
            recent=RecentPredictions(settings.recent_predictions),
            batcher=batcher,
            metrics=metrics,
            predlog=predlog,
            shadow=shadow,
            loader=loader,
            outbox=outbox,
            draining=draining,
            history=History(),
            feedback_limiter=RateLimiter(settings.feedback_per_minute, settings.feedback_burst),
            feedback_policy=configured_policy(settings),
        )
        drift = DriftStatus()
        metrics.watch({"production": holder, **({"shadow": shadow} if shadow else {})}, predlog, drift)
        app.state.serving = state
        tasks = [asyncio.create_task(_follow_alias(holders, settings.alias_poll_seconds, loader), name="follow-alias")]
        tasks.append(
            asyncio.create_task(_follow_drift(drift, store, settings.drift_poll_seconds, loader), name="follow-drift")
        )
        if predlog is not None:
            tasks.append(asyncio.create_task(predlog.run(), name="prediction-log"))
        tasks.append(asyncio.create_task(_flush_outbox(outbox, store, settings.outbox_flush_seconds), name="outbox"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.background:  # log records still being completed
                await asyncio.wait(state.background, timeout=10)
            await batcher.stop()
            loader.shutdown(wait=False, cancel_futures=True)
            if predlog is not None:
                try:
                    await asyncio.to_thread(predlog.flush)
                except Exception:
                    log.exception("final prediction log flush failed; records stay spooled")

    app = FastAPI(
        title="aidetect",
        version="0.1.0",
        summary="Is this image AI-generated? A continuously retrained detector.",
        description=(
            "Upload an image to `/v1/predict` for a verdict (`ai`, `real` or `uncertain`) from the production "
            "model; tell us when it is wrong with `/v1/feedback`. Models are ONNX files from the registry, "
            "hot-swapped when the `production` alias moves."
        ),
        lifespan=lifespan,
    )
    app.state.draining = draining
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if settings.cors_origins:  # unset: same-origin only, no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],  # not Authorization: admin calls are not for browsers
            allow_credentials=False,
        )
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
