"""The markdown the flows show as Prefect artifacts: pure functions of what the flows measured."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aidetect.links import drift_report_path, model_plot_path, public_link
from model.gate import Verdict
from storage.layout import DRIFT_PLOT, model_plot_key, parse_drift_report_key

# what an artifact says when it cannot link to serving
NO_PUBLIC_URL = "Set `AIDETECT_PUBLIC_URL` (where people's browsers reach serving) on the worker to see them here."

# the frozen test split's headline metrics, in the order the retrain report shows them
RETRAIN_METRICS = (
    "accuracy",
    "f1",
    "precision",
    "recall_ai",
    "recall_real",
    "roc_auc",
    "average_precision",
    "ece",
    "mean_prediction",
)


def retrain_report(
    version: str,
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    champion_version: str | None,
    verdict: Verdict,
    latency_ms: float,
    plots: Iterable[str],
    public_url: str | None,
) -> str:
    """The ``retrain`` artifact: the verdict, challenger against champion metric by metric, and the
    version's ``plots`` (names) as images served from ``public_url``."""
    rows = ["| metric (frozen test split) | challenger | champion |", "|---|---|---|"]

    def row(label: str, ours: float | None, theirs: float | None) -> None:
        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        rows.append(f"| {label} | {cell(ours)} | {cell(theirs)} |")

    for key in RETRAIN_METRICS:
        row(key, challenger[key], champion.get(key) if champion else None)
    ours_reg, theirs_reg = challenger.get("regression"), (champion or {}).get("regression")
    if ours_reg:
        row(
            f"accuracy on the regression set ({int(ours_reg['n'])} held-out feedback images)",
            ours_reg["accuracy"],
            theirs_reg["accuracy"] if theirs_reg else None,
        )
    for name, metrics in challenger["by_dataset"].items():
        other = champion["by_dataset"].get(name) if champion else None
        row(f"accuracy on {name}", metrics["accuracy"], other["accuracy"] if other else None)
    for tier, metrics in challenger["robustness"].items():
        other = champion["robustness"].get(tier) if champion else None
        row(f"accuracy, {tier}", metrics["accuracy"], other["accuracy"] if other else None)
    rows.append(f"| latency, one image (ms, median) | {latency_ms:.2f} | - |")
    status = "**blessed**" if verdict.blessed else "**rejected**"
    reasons = "".join(f"\n- {reason}" for reason in verdict.reasons)
    notes = "".join(f"\n- _{note}_" for note in verdict.notes)
    return (
        f"# Retrain: {version}\n\nChampion: `{champion_version or 'none'}`. Verdict: {status}{reasons}{notes}\n\n"
        + "\n".join(rows)
        + "\n\n"
        + plots_markdown(version, plots, public_url)
    )


def plots_markdown(version: str, plots: Iterable[str], public_url: str | None) -> str:
    """A version's plots as markdown images from serving, or where they are when serving's address is unknown."""
    names = list(plots)  # in the order the flow made them
    if not names:
        return "No plots were made.\n"
    if public_url is None:
        keys = "".join(f"\n- `{model_plot_key(version, name)}`" for name in names)
        return f"Plots, in the store:{keys}\n\n{NO_PUBLIC_URL}\n"
    return (
        "## Plots\n\n"
        + "\n\n".join(f"![{_title(name)}]({public_link(public_url, model_plot_path(version, name))})" for name in names)
        + "\n"
    )


def _title(file_name: str) -> str:
    """``confusion_matrix.png`` -> ``confusion matrix``."""
    return file_name.rpartition(".")[0].replace("_", " ")


def drift_report(summary: dict[str, Any], public_url: str | None) -> str:
    """The ``monitor-drift`` artifact, from the summary the flow returns: the numbers, a link to
    Evidently's page and the flow's picture (served from ``public_url``)."""
    window = summary["window"]
    lines = [
        f"# Drift of `{summary['model_version']}` ({summary['alias']}): {summary['status']}",
        "",
        f"Window: {window['start']} to {window['end']} ({window['hours']} h)",
        "",
    ]
    if summary["status"] == "insufficient data":
        lines.append(f"Only {summary['rows']['current']} predictions by this version in the window: no report.")
        return "\n".join(lines)
    rows, mean = summary["rows"], summary["mean_probability"]
    lines += [
        "| part | score | threshold | drifted |",
        "|---|---|---|---|",
        *(
            f"| {part} | {v['score']:.4g} | {v['threshold']:.4g} | {'**yes**' if v['drifted'] else 'no'} |"
            for part, v in summary["parts"].items()
        ),
        "",
        f"Drifted image statistics: {', '.join(summary['drifted_columns']) or 'none'}",
        "",
        f"Rows: {rows['current']} predictions against {rows['reference']} reference images"
        f" (compared: {rows['compared_current']} and {rows['compared_reference']}).",
        "",
        f"Mean P(ai): {mean['current']:.3f} now, {mean['reference']:.3f} in the reference.",
        "",
        f"False-alarm rate measured at calibration: {summary['false_alarm_rate']:.2%}"
        f" (target {summary['target_false_alarm_rate']:.0%}).",
        "",
    ]
    report_id, _ = parse_drift_report_key(summary["report"])
    if public_url is None:
        lines.append(f"Report: `{summary['report']}` in the store (with `summary.json` beside it). {NO_PUBLIC_URL}")
    else:
        page = public_link(public_url, drift_report_path(report_id))
        lines.append(f"**[Open the Evidently report]({page})** (`{summary['report']}`)")
        if summary.get("plot"):
            lines += ["", f"![drift]({public_link(public_url, drift_report_path(report_id, DRIFT_PLOT))})"]
    return "\n".join(lines)


def feedback_report(
    ref: str,
    parent: str | None,
    rows: list[dict[str, Any]],
    *,
    reports: int,
    added: int,
    withdrawn: int,
    regression_set: int,
    alias: str,
    pending: int,
    retrain_after: int,
) -> str:
    """The ``gather-feedback`` artifact: what the new dataset version ``ref`` holds."""
    ai = sum(r["label"] == "ai" for r in rows)
    return (
        f"# Feedback gathered\n\n`{ref}` (parent `{parent or 'none'}`): {len(rows)} images "
        f"({ai} ai, {len(rows) - ai} real) from {reports} reports.\n\n"
        f"| | images |\n|---|---|\n| added | {added} |\n| withdrawn (claim rejected since) | {withdrawn} |\n"
        f"| regression set (held out, never trained on) | {regression_set} |\n"
        f"| training images the `{alias}` model has not seen | {pending} (retrain after {retrain_after}) |\n"
    )
