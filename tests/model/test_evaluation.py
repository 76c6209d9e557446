"""ROC, average precision and ECE against scikit-learn and synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from model.evaluation import (
    average_precision,
    evaluate_scores,
    expected_calibration_error,
    reliability_table,
    roc_auc,
    roc_curve,
)
from model.metrics import binary_metrics


def tied_data(seed: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Noisy scores rounded to 1 decimal, so most thresholds are shared by many samples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = np.clip(np.round(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.25, n), 1), 0, 1)
    return y, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_ap_match_sklearn_with_ties(seed: int) -> None:
    y, s = tied_data(seed)
    assert len(np.unique(s)) < 15  # the case is really full of ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
        np.testing.assert_allclose(thr, sk_thr)


def test_roc_and_ap_match_sklearn_on_continuous_scores() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1000)
    s = rng.random(1000) * 0.6 + 0.3 * y
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s)
    sk = skm.roc_curve(y, s)
    for mine, theirs in zip((fpr, tpr, thr), sk, strict=True):
        np.testing.assert_allclose(mine, theirs)


def test_perfect_inverted_and_one_class() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert roc_auc(y, perfect) == 1.0
    assert average_precision(y, perfect) == 1.0
    inverted = 1 - perfect
    assert roc_auc(y, inverted) == 0.0
    assert roc_auc(y, inverted) == pytest.approx(skm.roc_auc_score(y, inverted))
    assert average_precision(y, inverted) == pytest.approx(skm.average_precision_score(y, inverted))
    constant = np.full(6, 0.5)
    assert roc_auc(y, constant) == pytest.approx(0.5)
    assert average_precision(y, constant) == pytest.approx(skm.average_precision_score(y, constant))
    assert math.isnan(roc_auc(np.ones(4), np.linspace(0, 1, 4)))
    assert math.isnan(roc_auc(np.zeros(4), np.linspace(0, 1, 4)))
    assert math.isnan(average_precision(np.zeros(4), np.linspace(0, 1, 4)))
    with pytest.raises(ValueError, match="labels"):
        roc_auc(y, perfect[:3])


def test_ece_is_small_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)  # labels drawn from the scores: calibrated by construction
    assert expected_calibration_error(y, p) < 0.01
    # Overconfident: the same labels, but scores pushed to the extremes.
    pushed = np.where(p >= 0.5, 0.99, 0.01)
    ece = expected_calibration_error(y, pushed)
    # Accuracy of the decision is E[max(p, 1 - p)] = 0.75 while confidence is 0.99.
    assert ece == pytest.approx(0.24, abs=0.01)


def test_ece_on_a_hand_computed_case() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.9, 0.2, 0.2])  # confidence 0.9, 0.9, 0.8, 0.8; correct 1, 0, 0, 1
    # Bins of width 0.5: everything in (0.5, 1]: accuracy 0.5, mean confidence 0.85.
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.35)
    # 10 bins: (0.8, 0.9] holds the 0.9s (acc 0.5), (0.7, 0.8] the 0.8s (acc 0.5).
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)


def test_reliability_table() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    rows = reliability_table(y, p, bins=10)
    assert [(r["lower"], r["upper"], r["count"]) for r in rows] == [(0.0, 0.1, 1.0), (0.1, 0.2, 2.0), (0.9, 1.0, 2.0)]
    assert rows[1]["mean_predicted"] == pytest.approx(0.135)
    assert rows[1]["fraction_ai"] == pytest.approx(0.5)
    assert rows[2]["fraction_ai"] == 1.0
    assert sum(r["count"] for r in rows) == len(p)


def test_evaluate_scores_with_beta_and_slices() -> None:
    y = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    p = np.array([0.9, 0.4, 0.2, 0.6, 0.8, 0.1, 0.7, 0.3])
    source = ["cifake", "cifake", "cifake", "cifake", "feedback", "feedback", "feedback", "feedback"]
    generator = ["sd", "sd", "none", "none", "mj", "none", "mj", "mj"]
    result = evaluate_scores(y, p, beta=0.5, groups={"source": source, "generator": generator})
    base = binary_metrics(y, p)
    for key, value in base.items():
        assert result[key] == value
    assert result["confusion"] == {"tp": 3, "fp": 1, "fn": 2, "tn": 2}
    assert all(type(v) is int for v in result["confusion"].values())
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert result["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert result["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert result["beta"] == 0.5
    assert result["mean_prediction_minus_beta"] == pytest.approx(p.mean() - 0.5)

    feedback = result["slices"]["source"]["feedback"]
    mask = np.array(source) == "feedback"
    assert feedback["n"] == 4
    assert feedback["accuracy"] == pytest.approx(binary_metrics(y[mask], p[mask])["accuracy"])
    assert feedback["roc_auc"] == pytest.approx(skm.roc_auc_score(y[mask], p[mask]))
    assert set(result["slices"]["generator"]) == {"sd", "none", "mj"}
    # One-class slices have no AUC rather than a nan.
    assert "roc_auc" not in result["slices"]["generator"]["sd"]
    assert "roc_auc" not in result["slices"]["generator"]["none"]
    assert result["slices"]["generator"]["sd"]["recall_ai"] == 0.5

    plain = evaluate_scores(y, p)
    assert "beta" not in plain and "slices" not in plain
    with pytest.raises(ValueError, match="group"):
        evaluate_scores(y, p, groups={"source": source[:3]})


def test_evaluate_scores_threshold_moves_the_confusion() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.7, 0.6, 0.4, 0.2])
    assert evaluate_scores(y, p)["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert evaluate_scores(y, p, threshold=0.65)["confusion"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}
