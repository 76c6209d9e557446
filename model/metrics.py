"""Classification metrics on P(ai) scores (numpy only, so flows and serving can use them)."""

from __future__ import annotations

import numpy as np


def binary_metrics(y_true: np.ndarray, p_ai: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, F1, precision, recall (AI = positive), per-class recall, mean prediction."""
    y = np.asarray(y_true).reshape(-1) >= 0.5
    p = np.asarray(p_ai, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} predictions")
    pred = p >= threshold
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    tn = float(np.sum(~pred & ~y))
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": float(n),
        "accuracy": (tp + tn) / n if n else 0.0,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision,
        "recall_ai": recall,
        "recall_real": tn / (tn + fp) if tn + fp else 0.0,
        "mean_prediction": float(p.mean()) if n else 0.0,
    }
