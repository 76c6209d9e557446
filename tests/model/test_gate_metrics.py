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
