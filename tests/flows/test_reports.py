"""The flows' markdown artifacts, rendered from what the flows measured (no Prefect)."""

from __future__ import annotations

from typing import Any

from flows.reports import NO_PUBLIC_URL, RETRAIN_METRICS, drift_report, feedback_report, retrain_report
from model.gate import Verdict


def metrics(accuracy: float, regression: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        **{key: accuracy for key in RETRAIN_METRICS},
        "regression": regression,
        "by_dataset": {"cifake": {"accuracy": accuracy}},
        "robustness": {"clean": {"accuracy": accuracy}},
    }


def test_the_retrain_report_sets_challenger_against_champion() -> None:
    verdict = Verdict(False, reasons=["accuracy 0.5000 is below the floor 0.6000"], notes=["no champion latency"])
    challenger = metrics(0.5, {"n": 40, "accuracy": 0.75})
    markdown = retrain_report("v2", challenger, metrics(0.9), "v1", verdict, 12.345, ["roc.png"], None)
    assert markdown.startswith("# Retrain: v2\n\nChampion: `v1`. Verdict: **rejected**")
    assert "- accuracy 0.5000 is below the floor 0.6000" in markdown and "- _no champion latency_" in markdown
    assert "| accuracy | 0.5000 | 0.9000 |" in markdown
    assert "| accuracy on the regression set (40 held-out feedback images) | 0.7500 | - |" in markdown
    assert "| accuracy on cifake | 0.5000 | 0.9000 |" in markdown
    assert "| accuracy, clean | 0.5000 | 0.9000 |" in markdown
    assert "| latency, one image (ms, median) | 12.35 | - |" in markdown
    # serving's address unknown: where the plot is in the store, and what to set (no worker paths)
    assert "- `models/v2/plots/roc.png`" in markdown and NO_PUBLIC_URL in markdown and "![" not in markdown
    first = retrain_report("v1", metrics(0.8), None, None, Verdict(True), 1.0, [], "http://h:1")
    assert "Champion: `none`. Verdict: **blessed**" in first and "| f1 | 0.8000 | - |" in first
    assert "No plots were made." in first


def test_the_retrain_report_shows_the_plots_from_serving_in_the_order_made() -> None:
    plots = ["training_curves.png", "confusion_matrix.png", "roc.png"]
    markdown = retrain_report("20260101T000000000000Z-abcdef", metrics(0.8), None, None, Verdict(True), 1.0, plots,
                              "https://aidetect.example.com/base")  # fmt: skip
    images = [line for line in markdown.splitlines() if line.startswith("![")]
    base = "https://aidetect.example.com/base/v1/models/20260101T000000000000Z-abcdef/plots/"
    assert images == [
        f"![training curves]({base}training_curves.png)",
        f"![confusion matrix]({base}confusion_matrix.png)",
        f"![roc]({base}roc.png)",
    ]
    assert NO_PUBLIC_URL not in markdown


REPORT_ID = "20260102T000000123456Z-0a1b2c"


def test_the_drift_report_shows_each_part_or_why_there_is_none() -> None:
    window = {"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00", "hours": 24}
    base = {"model_version": "v1", "alias": "production", "window": window}
    short = drift_report({**base, "status": "insufficient data", "rows": {"current": 7}}, "http://h:1")
    assert short.startswith("# Drift of `v1` (production): insufficient data")
    assert "Only 7 predictions" in short
    summary = {
        **base,
        "status": "drift",
        "rows": {"current": 300, "reference": 2000, "compared_current": 200, "compared_reference": 400},
        "mean_probability": {"current": 0.7, "reference": 0.5},
        "parts": {"image_stats": {"score": 0.9, "threshold": 0.2, "drifted": True}},
        "drifted_columns": ["brightness"],
        "false_alarm_rate": 0.01,
        "target_false_alarm_rate": 0.01,
        "report": f"reports/drift/{REPORT_ID}/report.html",
        "plot": f"reports/drift/{REPORT_ID}/drift.png",
    }
    markdown = drift_report(summary, None)
    assert "| image_stats | 0.9 | 0.2 | **yes** |" in markdown and "Drifted image statistics: brightness" in markdown
    assert "Mean P(ai): 0.700 now, 0.500 in the reference." in markdown
    assert f"`reports/drift/{REPORT_ID}/report.html` in the store" in markdown and NO_PUBLIC_URL in markdown
    served = drift_report(summary, "http://127.0.0.1:8000")
    page = f"http://127.0.0.1:8000/v1/reports/drift/{REPORT_ID}"
    assert f"**[Open the Evidently report]({page})**" in served and f"![drift]({page}/drift.png)" in served
    assert NO_PUBLIC_URL not in served


def test_the_feedback_report_counts_what_the_version_holds() -> None:
    rows = [{"label": "ai"}, {"label": "ai"}, {"label": "real"}]
    markdown = feedback_report(
        "feedback@v2",
        "v1",
        rows,
        reports=9,
        added=2,
        withdrawn=1,
        regression_set=1,
        alias="production",
        pending=2,
        retrain_after=50,
    )
    assert "`feedback@v2` (parent `v1`): 3 images (2 ai, 1 real) from 9 reports." in markdown
    assert "| withdrawn (claim rejected since) | 1 |" in markdown
    assert "| training images the `production` model has not seen | 2 (retrain after 50) |" in markdown
