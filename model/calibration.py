"""Temperature scaling of P(ai) and the three-way verdict (ai / real / uncertain).

numpy only: serving imports this on every request path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# float32 (what the ONNX graph returns) cannot tell 1 - 1e-7 from 1, so clipping here makes a score
# mean the same logit whether it arrives as float32 or float64, and keeps logits finite.
_EPS = 1e-7
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

Label = Literal["ai", "real", "uncertain"]


def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-7, 1 - 1e-7], so 0 and 1 give finite values (about +-16.1)."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, unlike 1 / (1 + exp(-z)) for large negative z.
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def apply_temperature(p_ai: Any, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): T > 1 softens, T < 1 sharpens. Same shape as the input (0-d for a scalar)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _sigmoid(logit(p_ai) / float(temperature))


def _nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(z / T), computed on logits for stability."""
    s = z / temperature
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(y_true: Any, p_ai: Any, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T in ``bounds`` minimising the binary NLL of apply_temperature(p_ai, T) against y_true.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search on log T finds
    the minimum; a fixed number of iterations makes it deterministic. A minimum at a bound returns
    (close to) that bound.
    """
    y = (np.asarray(y_true).reshape(-1) >= 0.5).astype(np.float64)
    z = logit(p_ai).reshape(-1)
    if y.shape != z.shape:
        raise ValueError(f"{y.shape[0]} labels but {z.shape[0]} scores")
    if y.size == 0:
        raise ValueError("fit_temperature needs at least one sample")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if not lo < hi:
        raise ValueError(f"bounds must be increasing positive numbers, got {bounds}")

    def loss(log_t: float) -> float:
        return _nll(y, z, math.exp(log_t))

    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    # 80 steps shrink the interval by 0.618**80 ~ 2e-17 of its width: far below any useful precision.
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2.0))


def verdict(p_calibrated: float, threshold: float = 0.5, uncertain_band: tuple[float, float] | None = None) -> Label:
    """ "uncertain" when band[0] <= p < band[1], else "ai" when p >= threshold, else "real"."""
    p = float(p_calibrated)
    if uncertain_band is not None and uncertain_band[0] <= p < uncertain_band[1]:
        return "uncertain"
    return "ai" if p >= threshold else "real"


@dataclass(frozen=True)
class Calibration:
    """How a model's raw score becomes what users see (from its card: ``ModelCard.calibration``)."""

    temperature: float = 1.0
    threshold: float = 0.5
    uncertain_band: tuple[float, float] | None = None

    def __call__(self, raw_score: float) -> tuple[Label, float]:
        """(verdict, calibrated P(ai)) for a raw score: what serving answers and drift references log."""
        p = float(np.clip(apply_temperature(np.float32(raw_score), self.temperature), 0.0, 1.0))
        return verdict(p, self.threshold, self.uncertain_band), p


def fit_uncertain_band(
    y_true: Any,
    p_calibrated: Any,
    target_accuracy: float = 0.95,
    max_uncertain_share: float = 0.2,
    threshold: float = 0.5,
) -> tuple[float, float]:
    """The narrowest symmetric band [threshold - w, threshold + w) to answer "uncertain" in.

    w runs over 0, 0.01, ..., 0.5. The first w for which the predictions outside the band (ai when
    p >= threshold) reach ``target_accuracy`` on these validation scores wins. A band never holds
    more than ``max_uncertain_share`` of the images: if the target can't be reached within that
    share, the widest band the share allows is returned. No band (w = 0, also when the target is
    already met) is (threshold, threshold), which ``verdict`` treats as empty. Edges are not clipped
    to [0, 1], so a threshold off 0.5 keeps the band symmetric.
    """
    y = np.asarray(y_true).reshape(-1) >= 0.5
    p = np.asarray(p_calibrated, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} scores")
    if p.size == 0:
        return (threshold, threshold)
    correct = (p >= threshold) == y
    best = (threshold, threshold)
    for k in range(51):
        w = k / 100
        # Rounding keeps the edges at the grid values (0.45, not 0.45000000000000001).
        band = (round(threshold - w, 10), round(threshold + w, 10))
        in_band = (p >= band[0]) & (p < band[1])
        # The share only grows with w, so the first band over the limit ends the search.
        if in_band.mean() > max_uncertain_share:
            break
        best = band if w > 0 else (threshold, threshold)
        decided = correct[~in_band]
        if decided.size and decided.mean() >= target_accuracy:
            break
    return best
