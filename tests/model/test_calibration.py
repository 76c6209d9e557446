"""Temperature scaling, the verdict and the uncertain band."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import apply_temperature, fit_temperature, fit_uncertain_band, logit, verdict


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def nll(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_logit_is_finite_and_inverts_sigmoid() -> None:
    z = np.linspace(-8, 8, 33)
    np.testing.assert_allclose(logit(sigmoid(z)), z, atol=1e-6)
    ends = logit(np.array([0.0, 1.0]))
    assert np.all(np.isfinite(ends))
    assert ends[0] < -15 and ends[1] > 15


def test_apply_temperature_identity_scalars_and_direction() -> None:
    p = np.array([0.01, 0.2, 0.5, 0.8, 0.99])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    assert float(apply_temperature(0.8, 1.0)) == pytest.approx(0.8)
    assert np.shape(apply_temperature(0.8, 2.0)) == ()
    soft = apply_temperature(p, 3.0)
    sharp = apply_temperature(p, 0.5)
    # T > 1 pulls toward 0.5, T < 1 pushes away; 0.5 stays put; order is kept.
    assert np.all(np.abs(soft - 0.5) <= np.abs(p - 0.5))
    assert np.all(np.abs(sharp - 0.5) >= np.abs(p - 0.5))
    assert soft[2] == pytest.approx(0.5)
    assert np.all(np.diff(soft) > 0)
    assert float(apply_temperature(0.8, 2.0)) == pytest.approx(float(sigmoid(np.log(4.0) / 2)))
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(0, 2.0, 50_000)
    y = (rng.random(z.size) < sigmoid(z)).astype(int)
    scores = sigmoid(z * true_t)  # miscalibrated by exactly true_t
    fitted = fit_temperature(y, scores)
    assert fitted == pytest.approx(true_t, rel=0.1)
    assert nll(y, apply_temperature(scores, fitted)) < nll(y, scores) - 0.01
    assert fit_temperature(y, scores) == fitted  # deterministic


def test_fit_temperature_of_calibrated_scores_is_about_one_and_respects_bounds() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.random(z.size) < sigmoid(z)).astype(int)
    assert fit_temperature(y, sigmoid(z)) == pytest.approx(1.0, rel=0.1)
    # Scores that carry no signal want T -> infinity: the search stops at the upper bound.
    noise = sigmoid(rng.normal(0, 3, z.size))
    assert fit_temperature(y, noise, bounds=(0.1, 5.0)) == pytest.approx(5.0, rel=1e-3)


def test_verdict_respects_the_band_edges() -> None:
    assert verdict(0.5) == "ai"
    assert verdict(0.4999) == "real"
    assert verdict(0.7, threshold=0.8) == "real"
    band = (0.4, 0.6)
    assert verdict(0.3999, uncertain_band=band) == "real"
    assert verdict(0.4, uncertain_band=band) == "uncertain"  # lower edge included
    assert verdict(0.5999, uncertain_band=band) == "uncertain"
    assert verdict(0.6, uncertain_band=band) == "ai"  # upper edge excluded
    assert verdict(0.5, uncertain_band=(0.5, 0.5)) == "ai"  # an empty band decides everything


def band_accuracy(y: np.ndarray, p: np.ndarray, band: tuple[float, float]) -> tuple[float, float]:
    """Accuracy of decided predictions and the share left uncertain."""
    in_band = (p >= band[0]) & (p < band[1])
    correct = (p >= 0.5) == (y == 1)
    return float(correct[~in_band].mean()), float(in_band.mean())


def test_fit_uncertain_band_is_empty_when_already_accurate() -> None:
    y = np.array([0] * 50 + [1] * 50)
    p = np.r_[np.linspace(0.0, 0.45, 50), np.linspace(0.55, 1.0, 50)]
    assert fit_uncertain_band(y, p, target_accuracy=0.95) == (0.5, 0.5)


def test_fit_uncertain_band_widens_until_the_target_is_met() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(20_000)
    y = (rng.random(p.size) < p).astype(int)  # calibrated: errors concentrate near 0.5
    before, _ = band_accuracy(y, p, (0.5, 0.5))
    assert before < 0.8
    band = fit_uncertain_band(y, p, target_accuracy=0.8, max_uncertain_share=0.5)
    lo, hi = band
    assert lo < 0.5 < hi
    assert hi - 0.5 == pytest.approx(0.5 - lo)
    after, share = band_accuracy(y, p, band)
    assert after >= 0.8 > before
    assert share <= 0.5
    # Narrowest: one step less misses the target.
    w = round(hi - 0.5, 2)
    narrower, _ = band_accuracy(y, p, (round(0.5 - w + 0.01, 10), round(0.5 + w - 0.01, 10)))
    assert narrower < 0.8


def test_fit_uncertain_band_never_exceeds_the_share() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(20_000)
    y = (rng.random(p.size) < p).astype(int)
    # 0.99 accuracy is out of reach with 10% uncertain: the widest band holding <= 10% comes back.
    band = fit_uncertain_band(y, p, target_accuracy=0.99, max_uncertain_share=0.1)
    _, share = band_accuracy(y, p, band)
    assert 0.08 <= share <= 0.1
    wider = (round(band[0] - 0.01, 10), round(band[1] + 0.01, 10))
    assert band_accuracy(y, p, wider)[1] > 0.1
    # No room at all: an empty band.
    assert fit_uncertain_band(y, p, target_accuracy=0.99, max_uncertain_share=0.0) == (0.5, 0.5)


def test_fit_uncertain_band_around_another_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.95, 0.72, 0.68, 0.75, 0.85])  # mistakes sit near 0.7
    band = fit_uncertain_band(y, p, target_accuracy=1.0, max_uncertain_share=0.3, threshold=0.7)
    assert band == (0.67, 0.73)
