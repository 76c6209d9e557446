"""The service's read-only URLs for a model version's plots and the drift reports, written once.

Serving declares its routes with these paths (``serving.routes.reports``); the flows put
``AIDETECT_PUBLIC_URL`` in front of them in their Prefect artifacts, and ``GET /v1/model``
lists the live version's plots with them.
"""

from __future__ import annotations

from urllib.parse import quote

MODEL_PLOT_ROUTE = "/v1/models/{version}/plots/{name}"
DRIFT_LATEST_ROUTE = "/v1/reports/drift/latest"
DRIFT_REPORT_ROUTE = "/v1/reports/drift/{report_id}"  # Evidently's HTML page
DRIFT_REPORT_FILE_ROUTE = "/v1/reports/drift/{report_id}/{name}"  # summary.json, drift.png


def model_plot_path(version: str, name: str) -> str:
    """Where serving answers with plot ``name`` of model ``version``."""
    return MODEL_PLOT_ROUTE.format(version=quote(version, safe=""), name=quote(name, safe=""))


def drift_report_path(report_id: str, name: str | None = None) -> str:
    """Where serving answers with a drift report's page (or, with ``name``, one of its other files)."""
    if name is None:
        return DRIFT_REPORT_ROUTE.format(report_id=quote(report_id, safe=""))
    return DRIFT_REPORT_FILE_ROUTE.format(report_id=quote(report_id, safe=""), name=quote(name, safe=""))


def public_link(base_url: str | None, path: str) -> str | None:
    """``path`` on the service as operators' browsers reach it (None when that address is not known)."""
    return None if base_url is None else base_url.rstrip("/") + path
