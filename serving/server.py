"""``aidetect serve``: uvicorn with a drain phase before shutdown, for rolling deploys.

On the first SIGTERM (or SIGINT) with ``AIDETECT_DRAIN_SECONDS`` > 0 the replica keeps
serving every request for that long while ``/healthz`` and ``/readyz`` answer 503, so the
load balancer's health check takes it out before its listener closes. Only then does
uvicorn's graceful shutdown start: the listener closes and requests in flight get up to
``AIDETECT_SHUTDOWN_TIMEOUT_SECONDS`` to finish. A second signal stops at once.
Without draining (the default) a signal stops the server as plain uvicorn does.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from aidetect.settings import Settings, get_settings

log = logging.getLogger("uvicorn.error")  # printed with uvicorn's own lines


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, draining: threading.Event, drain_seconds: float) -> None:
        super().__init__(config)
        self.draining = draining
        self.drain_seconds = drain_seconds
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_seconds <= 0 or self.draining.is_set() or self.should_exit:
            if self._timer is not None:
                self._timer.cancel()
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self.draining.set()
        self._captured_signals.append(sig)  # uvicorn re-raises it after the shutdown, as usual
        log.info("draining for %.1f s before shutting down (health checks answer 503)", self.drain_seconds)
        self._timer = threading.Timer(self.drain_seconds, self._stop)
        self._timer.daemon = True
        self._timer.start()

    def _stop(self) -> None:
        log.info("drained; shutting down")
        self.should_exit = True


def build(settings: Settings, host: str, port: int) -> DrainingServer:
    from serving.app import create_app

    app: FastAPI = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    return DrainingServer(config, app.state.draining, settings.drain_seconds)


def serve(host: str, port: int, settings: Settings | None = None) -> None:
    build(settings or get_settings(), host, port).run()
