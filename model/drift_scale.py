"""One scale for every drift part's score, shared by serving's metrics and the flow's picture.

On it 1 is the part's threshold and above 1 is drift: MMD / threshold for the embedding, and
log(p) / log(threshold) for the two KS p-values (image statistics, predictions). Pure Python:
serving imports it without the drift libraries.
"""

from __future__ import annotations

import math

P_PARTS = ("image_stats", "prediction")  # p-values: lower is more drift
MIN_P = 1e-300  # log of a p-value of 0


def severity(part: str, score: float, threshold: float) -> float:
    """The score on a scale where the threshold is 1 and drift is above it."""
    if part in P_PARTS:
        return math.log(max(score, MIN_P)) / math.log(threshold)
    return score / threshold
