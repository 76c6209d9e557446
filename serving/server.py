"""``aidetect serve``: uvicorn with a drain phase before shutdown, for rolling deploys.

On the first SIGTERM (or SIGINT) with ``AIDETECT_DRAIN_SECONDS`` > 0 the replica keeps
serving every request for that long while ``/healthz`` and ``/readyz`` answer 503, so the
load balancer's health check takes it out before its listener closes. Only then does
uvicorn's graceful shutdown start: the listener closes and requests in flight get up to
``AIDETECT_SHUTDOWN_TIMEOUT_SECONDS`` to finish. A second signal cuts the drain short (the
graceful shutdown still lets requests in flight finish; a further SIGINT forces the exit).
Without draining (the default) a signal stops the server as plain uvicorn does.
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from aidetect.settings import Settings, get_settings

log = logging.getLogger("uvicorn.error")  # printed with uvicorn's own lines


class DrainingServer(uvicorn.Server):
    """The signal handler only marks the drain; uvicorn's own tick (every 0.1 s) ends it.

    Nothing in the handler takes a lock or starts a thread (a signal can land while the main
    thread holds one); the log lines are written from the tick.
    """

    def __init__(self, config: uvicorn.Config, draining: threading.Event, drain_seconds: float) -> None:
        super().__init__(config)
        self.draining = draining
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_seconds <= 0 or self._drain_until is not None or self.should_exit:
            super().handle_exit(sig, frame)  # no drain, or a second signal: the shutdown starts now
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it after the shutdown, as usual
        self._drain_until = time.monotonic() + self.drain_seconds
        self.draining.set()  # /healthz and /readyz answer 503 from now on

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                log.info("draining for %.1f s before shutting down (health checks answer 503)", self.drain_seconds)
            if time.monotonic() >= self._drain_until:
                log.info("drained; shutting down")
                self.should_exit = True
        return await super().on_tick(counter)


def build(settings: Settings, host: str, port: int) -> DrainingServer:
    from serving.app import create_app

    app: FastAPI = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        # longer than a load balancer keeps idle connections to us (HAProxy: 5 s), so that it
        # never sends a request on a connection we are closing
        timeout_keep_alive=65,
    )
    return DrainingServer(config, app.state.draining, settings.drain_seconds)


def serve(host: str, port: int, settings: Settings | None = None) -> None:
    build(settings or get_settings(), host, port).run()
