"""Metrics and the gate's rules."""

from __future__ import annotations

import numpy as np
import pytest

from model.gate import GateConfig, judge
from model.metrics import binary_metrics


def test_binary_metrics_on_a_known_case() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.3, 0.2, 0.1])
    m = binary_metrics(y, p)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall_ai"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["recall_real"] == pytest.approx(4 / 5)
    assert m["mean_prediction"] == pytest.approx(p.mean())
    with pytest.raises(ValueError, match="labels"):
        binary_metrics(y, p[:3])


def test_gate_blesses_a_better_model_and_lists_every_failed_rule() -> None:
    config = GateConfig(max_accuracy_drop=0.02, min_accuracy=0.6, max_parity_diff=1e-4)
    assert judge({"accuracy": 0.9}, {"accuracy": 0.88}, 1e-6, config).blessed
    assert judge({"accuracy": 0.87}, {"accuracy": 0.88}, 1e-6, config).blessed  # within tolerance
    assert judge({"accuracy": 0.7}, None, 1e-6, config).blessed  # first model: floor only
    verdict = judge({"accuracy": 0.5}, {"accuracy": 0.9}, 1e-2, config)
    assert not verdict.blessed
    assert len(verdict.reasons) == 3
    assert any("parity" in r for r in verdict.reasons)
    assert any("champion" in r for r in verdict.reasons)


def _metrics(accuracy: float = 0.9, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "accuracy": accuracy,
        "recall_ai": accuracy,
        "recall_real": accuracy,
        "ece": 0.03,
        "mean_prediction": 0.5,
        "beta": 0.5,
        "mean_prediction_minus_beta": 0.0,
        "regression": None,
    }
    return base | kw


def test_gate_checks_recall_fairness_calibration_latency_and_the_regression_set() -> None:
    config = GateConfig(min_class_recall=0.7, max_mean_shift=0.1, max_ece=0.08, max_latency_ms=50)
    champion = _metrics(regression={"n": 40.0, "accuracy": 0.25})
    better = _metrics(regression={"n": 40.0, "accuracy": 0.7})
    assert judge(better, champion, 1e-6, config, latency_ms=10).blessed

    # a label-flipped challenger fails nearly every rule, each with its own reason
    flipped = _metrics(
        0.1,
        recall_ai=0.05,
        recall_real=0.15,
        ece=0.6,
        mean_prediction=0.38,
        mean_prediction_minus_beta=-0.12,
        regression={"n": 40.0, "accuracy": 0.0},
    )
    verdict = judge(flipped, champion, 1e-6, config, latency_ms=80)
    assert not verdict.blessed
    joined = " | ".join(verdict.reasons)
    for words in (
        "below the floor 0.6",
        "champion's 0.9",
        "recall of ai",
        "recall of real",
        "from beta",
        "ECE",
        "latency",
        "regression set",
    ):
        assert words in joined, words
    assert len(verdict.reasons) == 8

    # the regression set: equal is not better; a perfect champion only needs to be matched
    same = _metrics(regression={"n": 40.0, "accuracy": 0.25})
    assert "not better" in judge(same, champion, 1e-6, config).reasons[0]
    perfect = _metrics(regression={"n": 40.0, "accuracy": 1.0})
    assert judge(perfect, perfect, 1e-6, config).blessed
    gain = GateConfig(min_regression_gain=0.5)
    assert not judge(better, champion, 1e-6, gain).blessed  # 0.7 < 0.25 + 0.5
    # fewer held-out images than the minimum: non-inferiority (one image of slack), and the verdict says so
    champion10 = _metrics(regression={"n": 10.0, "accuracy": 0.5})
    tied = judge(_metrics(regression={"n": 10.0, "accuracy": 0.5}), champion10, 1e-6, config)
    assert tied.blessed and "non-inferiority" in tied.notes[0]
    assert judge(_metrics(regression={"n": 10.0, "accuracy": 0.4}), champion10, 1e-6, config).blessed
    worse = judge(_metrics(regression={"n": 10.0, "accuracy": 0.3}), champion10, 1e-6, config)
    assert not worse.blessed and "by more than one image" in worse.reasons[0]
    # none held out: skipped, and said
    none = judge(_metrics(regression=None), champion10, 1e-6, config)
    assert none.blessed and "rule skipped" in none.notes[0]


def test_gate_config_from_parameters_refuses_unknown_settings() -> None:
    assert GateConfig.from_dict({"max_ece": 0.2}).max_ece == 0.2
    assert GateConfig.from_dict(None) == GateConfig()
    with pytest.raises(ValueError, match="max_eec"):
        GateConfig.from_dict({"max_eec": 0.2})
