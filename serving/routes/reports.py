"""Read-only pictures and reports from the store, for people's browsers: a model version's plots
and monitor-drift's reports (the Evidently page, its summary, its picture).

The flows' Prefect artifacts show these (``AIDETECT_PUBLIC_URL`` + ``aidetect.links``) and the
web page's Model section shows the live version's plots. Every path part is checked against
the shape the store uses (``storage.layout``) and, for a plot, against the files its version
registered: anything else is a 404 that says why, and no request reaches another key. Model
versions and reports never change once written, so answers may be cached for good.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from aidetect.links import (
    DRIFT_LATEST_ROUTE,
    DRIFT_REPORT_FILE_ROUTE,
    DRIFT_REPORT_ROUTE,
    MODEL_PLOT_ROUTE,
    drift_report_path,
)
from model.registry import Registry
from serving.deps import StateDep
from serving.errors import PROBLEM
from serving.state import ServingState
from storage import NotFound
from storage.layout import (
    DRIFT_LATEST,
    DRIFT_REPORT_FILES,
    DRIFT_REPORT_HTML,
    drift_report_key,
    is_model_version,
    is_plot_name,
    is_report_id,
    model_plot_file,
    model_plot_key,
    parse_drift_report_key,
)

router = APIRouter(tags=["reports"])

IMMUTABLE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
}
# A picture runs nothing, even opened on its own (an SVG may carry script).
PICTURE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
# Evidently's page is one file: its inline scripts (a bundled React app that evals), inline styles,
# an embedded font and data-URL images; it fetches nothing. Sandboxed without allow-same-origin, it
# runs in an opaque origin: never with this site's cookies, whatever the logged data held.
REPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; sandbox allow-scripts allow-popups allow-downloads"
)
PICTURE = {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "PNG or SVG"}
HTML = {"content": {"text/html": {}}, "description": "Evidently's HTML report"}
REPORT_FILE = {
    "content": {"text/html": {}, "application/json": {}, "image/png": {}},
    "description": "the page (HTML), the summary (JSON) or the picture (PNG)",
}
REDIRECT = {"description": "to the newest report's page (Location)"}


def _media_type(name: str) -> str:
    return MEDIA_TYPES["." + name.rpartition(".")[2]]


async def _read(state: ServingState, key: str) -> bytes | None:
    try:
        return await asyncio.to_thread(state.store.get, key)
    except NotFound:
        return None


def _not_found(message: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, message)


def _answer(request: Request, body: bytes, media_type: str, etag: str, csp: str) -> Response:
    headers = {
        "Cache-Control": IMMUTABLE,
        "ETag": f'"{etag}"',
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@router.get(MODEL_PLOT_ROUTE, response_class=Response, responses={200: PICTURE, 404: PROBLEM, 503: PROBLEM})
async def model_plot(state: StateDep, request: Request, version: str, name: str) -> Response:
    """A plot registered with a model version (``GET /v1/model`` lists the live version's)."""
    if not is_model_version(version):
        raise _not_found(f"{version!r} is not a model version")
    if not is_plot_name(name):
        raise _not_found(f"{name!r} is not a plot name (lower-case letters, digits, _ and -, then .png or .svg)")
    try:
        card = await asyncio.to_thread(Registry(state.store).metadata, version)
    except NotFound:
        raise _not_found(f"model version {version!r} is not registered") from None
    file = model_plot_file(name)
    if file not in card.files:
        has = ", ".join(card.plot_names) or "none"
        raise _not_found(f"model version {version} has no plot {name!r}; it has: {has}")
    body = await _read(state, model_plot_key(version, name))
    if body is None:
        raise _not_found(f"model version {version} lists plot {name!r} but the store has no such file")
    return _answer(request, body, _media_type(name), card.files[file], PICTURE_CSP)


@router.get(DRIFT_LATEST_ROUTE, response_class=RedirectResponse, responses={307: REDIRECT, 404: PROBLEM, 503: PROBLEM})
async def latest_drift_report(state: StateDep) -> RedirectResponse:
    """A redirect to the newest drift report's page."""
    body = await _read(state, DRIFT_LATEST)
    if body is None:
        raise _not_found("no drift report yet: monitor-drift has not compared a full window")
    try:
        report_id, _ = parse_drift_report_key(json.loads(body)["report"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _not_found(f"the latest drift summary names no report ({exc})") from None
    return RedirectResponse(
        drift_report_path(report_id), status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"}
    )


async def _report_file(state: ServingState, request: Request, report_id: str, name: str) -> Response:
    if not is_report_id(report_id):
        raise _not_found(f"{report_id!r} is not a drift report id (like 20260101T000000000000Z-1a2b3c)")
    if name not in DRIFT_REPORT_FILES:
        raise _not_found(f"a drift report has {', '.join(DRIFT_REPORT_FILES)}, not {name!r}")
    body = await _read(state, drift_report_key(report_id, name))
    if body is None:
        raise _not_found(f"drift report {report_id} has no {name}")
    csp = REPORT_CSP if name == DRIFT_REPORT_HTML else PICTURE_CSP
    return _answer(request, body, _media_type(name), f"{report_id}-{name}", csp)


@router.get(DRIFT_REPORT_ROUTE, response_class=Response, responses={200: HTML, 404: PROBLEM, 503: PROBLEM})
async def drift_report(state: StateDep, request: Request, report_id: str) -> Response:
    """A monitor-drift report: Evidently's page."""
    return await _report_file(state, request, report_id, DRIFT_REPORT_HTML)


@router.get(DRIFT_REPORT_FILE_ROUTE, response_class=Response, responses={200: REPORT_FILE, 404: PROBLEM, 503: PROBLEM})
async def drift_report_file(state: StateDep, request: Request, report_id: str, name: str) -> Response:
    """One file of a monitor-drift report: ``summary.json``, ``drift.png`` (or ``report.html``)."""
    return await _report_file(state, request, report_id, name)
