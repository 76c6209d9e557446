"""For load balancers and Prometheus: ``/healthz``, ``/readyz`` (503 while draining) and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from serving.deps import StateDep
from serving.errors import PROBLEM
from serving.schemas import Health
from serving.state import ServingState

router = APIRouter(tags=["health"])


def _not_draining(state: ServingState) -> None:
    if state.draining.is_set():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "draining: this replica is shutting down and finishes the requests it has",
        )


@router.get("/healthz", response_model=Health, responses={503: PROBLEM})
async def healthz(state: StateDep) -> Health:
    """The process is up (with or without a model); 503 while draining before a shutdown, so a
    load balancer stops sending new requests here (every other endpoint still answers)."""
    _not_draining(state)
    live = state.holder.current
    return Health(status="ok", model_version=live.version if live else None, build=state.settings.build)


@router.get("/readyz", response_model=Health, responses={503: PROBLEM})
async def readyz(state: StateDep) -> Health:
    """Ready only with a model loaded, and not draining."""
    _not_draining(state)
    live = state.holder.current
    if live is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded")
    return Health(status="ready", model_version=live.version, build=state.settings.build)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: request latency, predictions by label, live model, swaps, refusals, feedback, log."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
