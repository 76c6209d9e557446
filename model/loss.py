"""The fairness loss: BCE + alpha * (mean(y_pred) - beta)^2."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="aidetect")
class FairnessBCE(keras.losses.Loss):
    """Binary cross-entropy plus a penalty on the batch's mean prediction drifting from beta.

    ``beta`` is the share of AI images the model should predict on average (by default the
    training set's AI share); ``alpha`` weighs the penalty. ``y_pred`` is P(ai).
    """

    def __init__(self, alpha: float = 0.1, beta: float = 0.5, name: str = "fairness_bce", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        y_pred = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        penalty = self.alpha * ops.square(ops.mean(y_pred) - self.beta)
        # Per-sample values whose mean is BCE + penalty, so Keras's reduction gives the loss.
        return bce + penalty

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}
