"""The HTTP API, one router per concern, gathered into ``api_router`` (mounted by ``serving.app``).

predict (one, batch) · explain (heatmap, thumbnail, annotated image) · history · feedback ·
model · reports (a version's plots, the drift reports) · admin · health (/healthz, /readyz, /metrics).
"""

from __future__ import annotations

from fastapi import APIRouter

from serving.routes import admin, explain, feedback, health, history, model, predict, reports

api_router = APIRouter()
api_router.include_router(predict.router)
api_router.include_router(explain.router)
api_router.include_router(history.router)
api_router.include_router(feedback.router)
api_router.include_router(model.router)
api_router.include_router(reports.router)
api_router.include_router(admin.router)
api_router.include_router(health.router)
