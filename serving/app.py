"""The FastAPI application factory. Nothing is built at import; models load in lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from asyncio import Task
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from aidetect import __version__
from aidetect.settings import Settings, get_settings
from feedback.outbox import Outbox
from feedback.policy import configured_policy
from model.inference import share_thread_pool
from serving.batching import MicroBatcher
from serving.drift_status import DriftStatus
from serving.errors import store_unavailable
from serving.history import History
from serving.hotswap import ModelHolder
from serving.journal import Journal
from serving.metrics import Metrics, RequestMetricsMiddleware
from serving.predlog import PredictionLog
from serving.ratelimit import RateLimiter
from serving.recent import RecentPredictions
from serving.replicas import ReplicaFolder
from serving.review_backlog import ReviewBacklog
from serving.routes import api_router, review
from serving.shared import sweep_expired
from serving.state import ServingState
from storage import StoreError, configured_store

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


async def _start_holder(holder: ModelHolder, loader: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(loader, holder.refresh)
    except StoreError as exc:
        log.warning("object store unreachable at start (alias %s): %s", holder.alias, exc)
    if holder.current is None:
        await loop.run_in_executor(loader, holder.load_cached)


async def poll_every(interval: float, fn: Callable[[], object], executor: Executor | None, what: str) -> None:
    """Call ``fn`` in ``executor`` (None: a worker thread) now and then every ``interval`` seconds, until cancelled.

    Nothing it raises stops the polling: a StoreError (the store unreachable; the next round
    tries again) is a warning, anything else is logged with its traceback.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(executor, fn)
        except StoreError as exc:
            log.warning("%s: store unreachable: %s", what, exc)
        except Exception:  # keep polling whatever one round hit
            log.exception("%s failed", what)
        await asyncio.sleep(interval)


async def _open(settings: Settings, metrics: Metrics, draining: threading.Event) -> tuple[ServingState, DriftStatus]:
    """Everything a replica holds, its models loaded (or the cached ones while the store is down)."""
    store = configured_store(settings)
    if settings.ort_shared_pool:
        share_thread_pool(settings.ort_threads)
    loader = model_loader()
    batcher = MicroBatcher(
        settings.batch_max_size, settings.batch_max_wait_ms / 1000, on_batch=metrics.batch_size.observe
    )
    await batcher.start()

    def follow(alias: str) -> ModelHolder:
        return ModelHolder(
            store,
            settings.cache_dir / "models" / alias,
            alias=alias,
            threads=settings.ort_threads,
            variant=settings.model_variant,
            runner=batcher.run_blocking,
        )

    holder = follow(settings.model_alias)
    shadow = follow(settings.shadow_alias) if settings.shadow_alias else None
    for each in _holders(holder, shadow):
        await _start_holder(each, loader)
    replica = None
    if settings.replicas_dir is not None:  # unsent data on the shared volume, adopted if this replica dies
        replica_id = settings.replica_id or socket.gethostname()
        replica = await asyncio.to_thread(ReplicaFolder.claim, settings.replicas_dir, replica_id)
    local = replica.folder if replica is not None else settings.cache_dir
    predlog = None
    if settings.prediction_log:
        journal = None
        if settings.log_journal:
            journal = Journal(local / "journal" / "predictions", settings.log_journal_commit_ms / 1000)
        predlog = PredictionLog(
            store,
            local / "spool" / "predictions",
            flush_seconds=settings.log_flush_seconds,
            batch_size=settings.log_batch_size,
            journal=journal,
        )
        await asyncio.to_thread(predlog.open)  # what a killed process journaled is logged before we answer
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
        outbox=Outbox(local / "outbox" / "feedback"),
        replica=replica,
        draining=draining,
        history=History(),
        feedback_limiter=RateLimiter(settings.feedback_per_minute, settings.feedback_burst),
        feedback_policy=configured_policy(settings),
    )
    drift = DriftStatus()
    metrics.watch({"production": holder, **({"shadow": shadow} if shadow else {})}, predlog, drift)
    return state, drift


def _holders(holder: ModelHolder, shadow: ModelHolder | None) -> list[ModelHolder]:
    return [holder] if shadow is None else [holder, shadow]


def _background(state: ServingState, drift: DriftStatus) -> list[Task[None]]:
    """The replica's loops: follow the alias(es) and the drift report on the model loader, write
    the prediction log, send the feedback outbox (on a worker thread: never behind a model load)."""
    settings, store, loader = state.settings, state.store, state.loader

    def every(seconds: float, fn: Callable[[], object], executor: Executor | None, what: str, name: str) -> Task[None]:
        return asyncio.create_task(poll_every(seconds, fn, executor, what), name=name)

    tasks = [
        every(settings.alias_poll_seconds, h.poll, loader, f"alias {h.alias} check", f"follow-alias-{h.alias}")
        for h in _holders(state.holder, state.shadow)
    ]
    tasks.append(
        every(
            settings.drift_poll_seconds, partial(drift.poll, store), loader, "latest drift report read", "follow-drift"
        )
    )
    if state.predlog is not None:
        tasks.append(asyncio.create_task(state.predlog.run(), name="prediction-log"))
    flush = partial(state.outbox.flush, store)  # also what an earlier run left behind
    tasks.append(every(settings.outbox_flush_seconds, flush, None, "feedback outbox flush", "outbox"))
    if state.replica is not None:  # now (at start) and then now and then: dead siblings' unsent data
        adopt = partial(state.replica.adopt_dead, state.predlog)
        tasks.append(every(settings.adopt_seconds, adopt, None, "dead replica adoption", "adopt-replicas"))
    sweep = partial(sweep_expired, state)  # any replica may: deleting is idempotent
    tasks.append(every(settings.recent_sweep_seconds, sweep, None, "recent/ and history/ sweep", "sweep-recent"))
    return tasks


async def _close(state: ServingState, tasks: list[Task[None]]) -> None:
    """Stop the loops, finish the log records in progress, stop inference, flush the prediction log."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if state.background:  # log records still being completed
        await asyncio.wait(state.background, timeout=10)
    await state.batcher.stop()
    if state.loader is not None:
        state.loader.shutdown(wait=False, cancel_futures=True)
    if state.predlog is not None:
        try:
            await asyncio.to_thread(state.predlog.close)
        except Exception:
            log.exception("final prediction log flush failed; records stay spooled or journaled")
    if state.replica is not None:
        state.replica.release()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; raises ``InsecureSettings`` (serving does not start) on a placeholder admin token
    outside the embedded default (see ``Settings.check_serving_security``)."""
    settings = settings or get_settings()
    settings.check_serving_security()
    metrics = Metrics()
    backlog = ReviewBacklog()  # aidetect_review_backlog on /metrics (serving.review_backlog)
    metrics.registry.register(backlog)
    draining = threading.Event()  # set by serving.server on SIGTERM, before the lifespan ends

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state, drift = await _open(settings, metrics, draining)
        app.state.serving = state
        tasks = _background(state, drift)
        count = partial(backlog.poll, state.store, state.feedback_policy)
        poll = poll_every(settings.review_backlog_poll_seconds, count, None, "review backlog count")
        tasks.append(asyncio.create_task(poll, name="review-backlog"))
        try:
            yield
        finally:
            await _close(state, tasks)

    app = FastAPI(
        title="aidetect",
        version=__version__,
        summary="Is this image AI-generated? A continuously retrained detector.",
        description=(
            "Upload an image to `/v1/predict` for a verdict (`ai`, `real` or `uncertain`) from the production "
            "model; tell us when it is wrong with `/v1/feedback`. Models are ONNX files from the registry, "
            "hot-swapped when the `production` alias moves."
        ),
        lifespan=lifespan,
    )
    app.state.draining = draining
    app.state.review_backlog = backlog
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if settings.cors_origins:  # unset: same-origin only, no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],  # not Authorization: admin calls are not for browsers
            allow_credentials=False,
        )
    app.add_exception_handler(StoreError, store_unavailable)
    app.include_router(api_router)
    app.include_router(review.router)  # the review page's API, behind AIDETECT_REVIEWER_TOKEN
    app.include_router(review.page_router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
