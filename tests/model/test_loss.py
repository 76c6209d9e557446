"""The fairness loss equals BCE + alpha * (mean(y_pred) - beta)^2."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.loss import FairnessBCE


def _expected(y: np.ndarray, p: np.ndarray, alpha: float, beta: float) -> float:
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(bce + alpha * (p.mean() - beta) ** 2)


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.5), (0.1, 0.5), (2.0, 0.2), (5.0, 0.9)])
def test_matches_the_formula(alpha: float, beta: float) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=64).astype("float32")
    p = rng.uniform(0.05, 0.95, size=64).astype("float32")
    loss = FairnessBCE(alpha=alpha, beta=beta)
    value = float(keras.ops.convert_to_numpy(loss(y[:, None], p[:, None])))
    assert value == pytest.approx(_expected(y, p, alpha, beta), rel=1e-4)


def test_penalty_pushes_the_mean_prediction_towards_beta() -> None:
    y = np.array([1, 0, 1, 0], dtype="float32")
    biased = np.array([0.9, 0.8, 0.9, 0.8], dtype="float32")  # mean 0.85
    plain = float(keras.ops.convert_to_numpy(FairnessBCE(alpha=0.0)(y, biased)))
    fair = float(keras.ops.convert_to_numpy(FairnessBCE(alpha=1.0, beta=0.5)(y, biased)))
    assert fair == pytest.approx(plain + (0.85 - 0.5) ** 2, rel=1e-4)


def test_config_roundtrip_and_validation() -> None:
    loss = FairnessBCE(alpha=0.3, beta=0.4)
    again = FairnessBCE.from_config(loss.get_config())
    assert (again.alpha, again.beta) == (0.3, 0.4)
    with pytest.raises(ValueError, match="beta"):
        FairnessBCE(beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        FairnessBCE(alpha=-1)
