"""The FastAPI application factory. Nothing is built at import; models load in lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from aidetect.settings import Settings, get_settings
from serving.recent import RecentPredictions
from serving.routes import router
from serving.runtime import ModelHolder
from storage import StoreError

log = logging.getLogger("aidetect.serving")
STATIC = Path(__file__).parent / "static"


async def _follow_alias(holder: ModelHolder, interval: float) -> None:
    while True:
        try:
            await asyncio.to_thread(holder.refresh)
        except StoreError as exc:
            log.warning("alias check failed (store unreachable?): %s", exc)
        except Exception:  # keep following whatever one check hit
            log.exception("alias check failed")
        await asyncio.sleep(interval)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = settings.open_store()
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        holder = ModelHolder(
            store, settings.cache_dir / "models", alias=settings.model_alias, threads=settings.ort_threads
        )
        (settings.cache_dir / "models").mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(holder.refresh)
        except StoreError as exc:
            log.warning("object store unreachable at start: %s", exc)
        if holder.current is None:
            await asyncio.to_thread(holder.load_cached)
        app.state.settings = settings
        app.state.store = store
        app.state.holder = holder
        app.state.recent = RecentPredictions(settings.recent_predictions)
        follower = asyncio.create_task(_follow_alias(holder, settings.alias_poll_seconds))
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    app = FastAPI(
        title="aidetect",
        version="0.1.0",
        summary="Is this image AI-generated? A continuously retrained detector.",
        lifespan=lifespan,
    )
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
