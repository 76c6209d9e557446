"""``monitor-drift``: the production model's recent predictions against its reference, with Evidently.

Reads the prediction log of the last ``window_hours`` for the version the alias points at,
compares it with the reference stored beside that version (``model.drift``), writes
``reports/drift/<time>/report.html``, ``summary.json`` and ``drift.png``, shows the key numbers,
the picture and a link to the report (served by serving at ``AIDETECT_PUBLIC_URL``) as the
``monitor-drift`` artifact, and emits ``aidetect.drift.detected`` when drift is found (the
retrain deployment's trigger listens for it).
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from aidetect.settings import get_settings
from flows.common import io_task, store_for
from flows.reports import drift_report
from model.drift import (
    DRIFT_CALIBRATION_FILE,
    PARTS,
    PREDICTION,
    REFERENCE_FILE,
    detect_drift,
    read_reference,
)
from model.drift_scale import severity
from model.registry import Registry
from storage import NotFound
from storage.layout import (
    DRIFT_LATEST,
    DRIFT_PLOT,
    DRIFT_REPORT_HTML,
    DRIFT_SUMMARY,
    drift_report_prefix,
    model_prefix,
    new_version_id,
    utcnow,
)
from storage.predictions import as_utc, read_window

DRIFT_EVENT = "aidetect.drift.detected"
ARTIFACT_KEY = "monitor-drift"


class MissingReference(RuntimeError):
    """The monitored model version was registered without drift reference files."""


@io_task
def aliased_version(store_url: str | None, alias: str) -> str | None:
    """The version ``alias`` points at, if any."""
    record, _ = Registry(store_for(store_url)).alias(alias)
    return record.version if record else None


@io_task
def model_file(store_url: str | None, version: str, name: str) -> bytes | None:
    """A file of a model version, or None when the version has none of that name."""
    try:
        return store_for(store_url).get(model_prefix(version) + name)
    except NotFound:
        return None


@io_task
def load_window(store_url: str | None, start: datetime, end: datetime, version: str) -> pd.DataFrame:
    """The predictions ``version`` made from ``start`` to ``end``."""
    return read_window(store_for(store_url), start, end, version)


@task(cache_policy=NO_CACHE)
def compare(reference: bytes, window: pd.DataFrame, calibration: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Evidently's comparison of ``window`` with the reference: the summary and the HTML report."""
    return detect_drift(read_reference(reference), window, calibration)


@task(cache_policy=NO_CACHE)
def draw(reference: bytes, window: pd.DataFrame, summary: dict[str, Any]) -> bytes:
    """The report's picture (``model.plots.plot_drift``): P(ai) now and in the reference, each part's severity."""
    from model.plots import plot_drift

    parts = summary["parts"]
    scale = {part: severity(part, parts[part]["score"], parts[part]["threshold"]) for part in PARTS}
    with tempfile.TemporaryDirectory() as folder:
        path = plot_drift(
            read_reference(reference)[PREDICTION],
            window[PREDICTION],
            scale,
            {part: parts[part]["drifted"] for part in PARTS},
            Path(folder) / DRIFT_PLOT,
        )
        return path.read_bytes()


@io_task
def save_report(store_url: str | None, prefix: str, html: str, png: bytes, summary: dict[str, Any]) -> None:
    """The HTML report, its picture and its summary under ``prefix``, then the summary as the latest."""
    store = store_for(store_url)
    store.put(prefix + DRIFT_REPORT_HTML, html.encode())
    store.put(prefix + DRIFT_PLOT, png)
    body = json.dumps(summary, indent=2, allow_nan=False).encode()
    store.put(prefix + DRIFT_SUMMARY, body)
    store.put(DRIFT_LATEST, body)  # last: what serving exports as metrics (serving/drift_status.py)


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(
    window_hours: int = 24,
    alias: str | None = None,
    min_rows: int = 100,
    store_url: str | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Compare the last ``window_hours`` of predictions (up to ``end``, default now) with the reference.

    ``alias`` (default: the settings' ``model_alias``) names the monitored version. Returns the
    summary; its ``status`` is ``drift``, ``no drift`` or ``insufficient data`` (fewer than
    ``min_rows`` predictions by the aliased version: nothing is written to the store then).
    """
    logger = get_run_logger()
    public_url = get_settings().public_url
    alias = alias or get_settings().model_alias
    end = utcnow() if end is None else as_utc(end)
    start = end - timedelta(hours=window_hours)
    version = aliased_version(store_url, alias)
    if version is None:
        raise ValueError(f"no model version has the alias {alias!r}: nothing to monitor")
    reference = model_file(store_url, version, REFERENCE_FILE)
    calibration = model_file(store_url, version, DRIFT_CALIBRATION_FILE)
    if reference is None or calibration is None:
        raise MissingReference(
            f"model version {version} ({alias}) has no drift reference ({REFERENCE_FILE} and "
            f"{DRIFT_CALIBRATION_FILE}): register versions with model.drift.build_reference_files"
        )
    window: pd.DataFrame = load_window(store_url, start, end, version)
    summary: dict[str, Any] = {
        "model_version": version,
        "alias": alias,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "hours": window_hours},
    }
    if len(window) < min_rows:
        summary.update(status="insufficient data", drift_detected=False, rows={"current": len(window)})
        logger.warning("%d predictions by %s in the window, %d needed: no drift report", len(window), version, min_rows)
        markdown = drift_report(summary, public_url)
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description=f"drift of {version}")
        return summary

    result, html = compare(reference, window, json.loads(calibration))
    prefix = drift_report_prefix(new_version_id(end))
    summary.update(status="drift" if result["drift_detected"] else "no drift", **result)
    summary["report"], summary["plot"] = prefix + DRIFT_REPORT_HTML, prefix + DRIFT_PLOT
    save_report(store_url, prefix, html, draw(reference, window, summary), summary)
    markdown = drift_report(summary, public_url)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description=f"drift of {version}")
    logger.info("%s: %s (%s)", version, summary["status"], ", ".join(result["drifted_parts"]) or "no part drifted")
    if result["drift_detected"]:
        emit_event(
            event=DRIFT_EVENT,
            resource={"prefect.resource.id": f"aidetect.model.{version}", "aidetect.alias": alias},
            payload={
                "version": version,
                "alias": alias,
                "report": summary["report"],
                "drifted_parts": result["drifted_parts"],
                "drifted_columns": result["drifted_columns"],
                "rows": result["rows"],
                "scores": {part: result["parts"][part]["score"] for part in PARTS},
                "thresholds": {part: result["parts"][part]["threshold"] for part in PARTS},
            },
        )
    return summary
