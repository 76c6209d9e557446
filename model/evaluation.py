"""Ranking and calibration metrics on P(ai) scores: ROC, average precision, ECE, per-group slices.

numpy only (no scikit-learn), so flows and serving can import it cheaply. Labels: 1 = ai, 0 = real.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from model.metrics import binary_metrics

if TYPE_CHECKING:
    from model.imagesets import ImageSet
    from model.inference import OnnxModel


def _labels_and_scores(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1) >= 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    return y, s


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct score, highest score first."""
    # A stable sort keeps the result independent of how equal scores happen to be ordered.
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Ties: one point per distinct score, taken after the last sample with that score.
    distinct = np.flatnonzero(np.diff(s_sorted))
    idx = np.r_[distinct, len(s_sorted) - 1]
    tps = np.cumsum(y_sorted, dtype=np.float64)[idx]
    fps = 1.0 + idx - tps
    return fps, tps, s_sorted[idx]


def roc_curve(y_true: Any, scores: Any, *, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct threshold (like sklearn.metrics.roc_curve).

    The first threshold is +inf (nothing predicted ai). With ``drop_intermediate`` collinear points
    are dropped, as sklearn does by default. A rate is nan when its class is absent.
    """
    y, s = _labels_and_scores(y_true, scores)
    if s.size == 0:
        raise ValueError("roc_curve needs at least one sample")
    fps, tps, thresholds = _binary_clf_curve(y, s)
    if drop_intermediate and len(fps) > 2:
        # Keep corners only: a point whose neighbours lie on the same line adds nothing to the curve.
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count half); nan if only one class is present."""
    y, s = _labels_and_scores(y_true, scores)
    if s.size == 0 or y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(np.trapezoid(tpr, fpr))


def average_precision(y_true: Any, scores: Any) -> float:
    """sklearn's average precision: sum over thresholds of (R_n - R_{n-1}) * P_n; nan without any ai sample."""
    y, s = _labels_and_scores(y_true, scores)
    if not y.any():
        return float("nan")
    fps, tps, _ = _binary_clf_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    # No interpolation (unlike the trapezoid rule), so the value matches sklearn exactly.
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(y_true: Any, p_ai: Any, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| per bin, weighted by the bin's share of samples.

    Confidence is that of the predicted class, max(p, 1 - p) (ai predicted when p >= 0.5); the bins
    are ``bins`` equal-width intervals (lower, upper] on [0, 1], as in Guo et al. 2017, so only
    the upper half is ever populated. nan for no samples.
    """
    y, p = _labels_and_scores(y_true, p_ai)
    if p.size == 0:
        return float("nan")
    if bins < 1:
        raise ValueError("bins must be at least 1")
    pred = p >= 0.5
    confidence = np.where(pred, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    # Sum over bins of (n_b / n) * |acc_b - conf_b| == sum |acc_sum_b - conf_sum_b| / n.
    return float(np.sum(np.abs(acc_sum - conf_sum)) / p.size)


def reliability_table(y_true: Any, p_ai: Any, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin [lower, upper) on P(ai) (the last bin includes 1): count, mean P(ai), share of ai.

    Empty bins are left out, so every value is finite (the table is written to JSON).
    """
    y, p = _labels_and_scores(y_true, p_ai)
    if bins < 1:
        raise ValueError("bins must be at least 1")
    index = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        if n == 0:
            continue
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": float(n),
                "mean_predicted": float(p[members].mean()),
                "fraction_ai": float(y[members].mean()),
            }
        )
    return rows


def evaluate_scores(
    y_true: Any,
    p_ai: Any,
    *,
    beta: float | None = None,
    groups: dict[str, Sequence[str]] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Every metric the reports need for one set of scores.

    ``binary_metrics`` at ``threshold`` plus roc_auc, average_precision, ece, the confusion counts,
    ``mean_prediction_minus_beta`` when the expected ai share ``beta`` is given, and for each entry
    of ``groups`` (one value per image, e.g. the source or the generator) ``slices[group][value]``:
    that subset's ``binary_metrics``, with ``roc_auc`` only where both classes are present.
    """
    y, p = _labels_and_scores(y_true, p_ai)
    result: dict[str, Any] = dict(binary_metrics(y, p, threshold))
    result["roc_auc"] = roc_auc(y, p)
    result["average_precision"] = average_precision(y, p)
    result["ece"] = expected_calibration_error(y, p)
    if beta is not None:
        result["beta"] = float(beta)
        result["mean_prediction_minus_beta"] = result["mean_prediction"] - float(beta)
    pred = p >= threshold
    result["confusion"] = {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "fn": int(np.sum(~pred & y)),
        "tn": int(np.sum(~pred & ~y)),
    }
    if groups:
        slices: dict[str, dict[str, dict[str, float]]] = {}
        for group_name, values in groups.items():
            labels = np.asarray([str(v) for v in values], dtype=object)
            if labels.shape != y.shape:
                raise ValueError(f"group {group_name!r} has {labels.shape[0]} values for {y.shape[0]} images")
            per_value: dict[str, dict[str, float]] = {}
            for value in sorted(set(labels.tolist())):
                members = labels == value
                metrics = binary_metrics(y[members], p[members], threshold)
                if y[members].any() and not y[members].all():
                    metrics["roc_auc"] = roc_auc(y[members], p[members])
                per_value[value] = metrics
            slices[group_name] = per_value
        result["slices"] = slices
    return result


def evaluate_model(
    model: OnnxModel,
    frozen: ImageSet,
    regression: ImageSet | None,
    temperature: float,
    beta: float | None,
    robustness: Sequence[str] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The gate's evaluation of an ONNX model on encoded images: every metric on ``frozen``
    (calibrated scores), sliced by dataset and generator and by ``robustness`` tier (default:
    every tier of ``model.robustness.TIERS``), plus
    ``regression`` (the held-out feedback) when given. Returns the metrics and the clean scores.

    Used by the retrain flow's gate and by ``aidetect model evaluate``.
    """
    from model.calibration import apply_temperature
    from model.robustness import TIERS, tier_pixels

    tiers: dict[str, np.ndarray] = {}
    for tier in dict.fromkeys(("clean", *(TIERS if robustness is None else robustness))):
        scores, _ = model.predict(tier_pixels(frozen.images, model.image_size, tier, fit=model.input_fit))
        tiers[tier] = apply_temperature(scores, temperature)
    metrics = evaluate_scores(
        frozen.y, tiers["clean"], beta=beta, groups={"dataset": frozen.dataset, "generator": frozen.generator}
    )
    metrics["by_dataset"] = metrics["slices"]["dataset"]
    metrics["robustness"] = {tier: binary_metrics(frozen.y, p) for tier, p in tiers.items()}
    metrics["regression"] = None
    if regression is not None and len(regression):
        scores, _ = model.predict(regression.decode(model.image_size, model.input_fit).x)
        metrics["regression"] = binary_metrics(regression.y, apply_temperature(scores, temperature))
    return metrics, tiers["clean"]
