"""The validation gate: is the challenger good enough to replace the champion?

Both models are measured by the retrain flow on the same data, never trained on:

- the *frozen* test split of the base datasets (content-hashed, so it never changes), which
  carries the headline metrics (accuracy, per-class recall, ECE, mean prediction);
- the *regression set*: the held-out slice of accepted feedback (the feedback dataset's test
  split). These are images a deployed model got wrong; a challenger must do better on them.

Every failed rule is a reason; the challenger is blessed only when there is none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class GateConfig:
    max_accuracy_drop: float = 0.02  # frozen test: at most this much worse than the champion
    min_accuracy: float = 0.6  # frozen test: absolute floor, also for the first model
    min_class_recall: float = 0.5  # frozen test: recall of each class (ai and real)
    max_mean_shift: float = 0.15  # frozen test: |mean(prediction) - beta|, the fairness term's target
    max_ece: float = 0.1  # frozen test: expected calibration error of the calibrated scores
    min_regression_gain: float = 0.0  # regression set: challenger >= champion + gain, and strictly better
    # Below this many images "strictly better" is a coin toss (one image moves accuracy by more than
    # 3 points): the rule falls back to non-inferiority, no worse than the champion by one image.
    min_regression_images: int = 30
    max_parity_diff: float = 1e-4  # ONNX vs Keras, max |diff| of P(ai)
    max_latency_ms: float = 250.0  # ONNX, one image, median on the machine running the gate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> GateConfig:
        """Config from flow parameters; an unknown key is an error, not a silent default."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown gate setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # rules skipped, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    parity_diff: float,
    config: GateConfig,
    *,
    latency_ms: float | None = None,
) -> Verdict:
    """Compare metrics measured on the same data (see the module docstring).

    ``challenger`` and ``champion`` are ``model.evaluation.evaluate_scores`` results on the
    frozen test split, optionally with ``regression``: ``binary_metrics`` on the regression set.
    """
    reasons: list[str] = []
    notes: list[str] = []
    if parity_diff > config.max_parity_diff:
        reasons.append(f"ONNX parity {parity_diff:.2e} exceeds {config.max_parity_diff:.0e}")
    accuracy = challenger["accuracy"]
    if accuracy < config.min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} is below the floor {config.min_accuracy:.4f}")
    if champion is not None and accuracy < champion["accuracy"] - config.max_accuracy_drop:
        reasons.append(
            f"accuracy {accuracy:.4f} is worse than the champion's {champion['accuracy']:.4f} "
            f"by more than {config.max_accuracy_drop:.4f}"
        )
    for cls in ("ai", "real"):
        recall = challenger.get(f"recall_{cls}")
        if recall is not None and recall < config.min_class_recall:
            reasons.append(f"recall of {cls} images {recall:.4f} is below the floor {config.min_class_recall:.4f}")
    shift = challenger.get("mean_prediction_minus_beta")
    if shift is not None and abs(shift) > config.max_mean_shift:
        reasons.append(
            f"mean prediction {challenger['mean_prediction']:.4f} is {abs(shift):.4f} from beta "
            f"{challenger['beta']:.4f} (bound {config.max_mean_shift:.4f})"
        )
    ece = challenger.get("ece")
    if ece is not None and ece > config.max_ece:
        reasons.append(f"calibration error (ECE) {ece:.4f} exceeds {config.max_ece:.4f}")
    if latency_ms is not None and latency_ms > config.max_latency_ms:
        reasons.append(f"latency {latency_ms:.1f} ms per image exceeds the budget {config.max_latency_ms:.1f} ms")
    reasons.extend(_regression_rule(challenger, champion, config, notes))
    return Verdict(blessed=not reasons, reasons=reasons, notes=notes)


def _regression_rule(
    challenger: dict[str, Any], champion: dict[str, Any] | None, config: GateConfig, notes: list[str]
) -> list[str]:
    ours = challenger.get("regression")
    if not ours or not ours["n"]:
        notes.append("regression set: 0 images: rule skipped")
        return []
    if champion is None or not champion.get("regression"):
        notes.append("regression set: no champion to compare with")
        return []
    theirs = champion["regression"]["accuracy"]
    n = int(ours["n"])
    if n < config.min_regression_images:
        notes.append(
            f"regression set: {n} images, fewer than {config.min_regression_images:g}: "
            "non-inferiority only (no worse than the champion by more than one image)"
        )
        if ours["accuracy"] < theirs - 1.0 / n - 1e-9:
            return [
                f"regression set ({n} held-out feedback images): accuracy {ours['accuracy']:.4f} is worse than "
                f"the champion's {theirs:.4f} by more than one image"
            ]
        return []
    needed = min(theirs + config.min_regression_gain, 1.0)
    better = ours["accuracy"] > theirs or theirs >= 1.0
    if ours["accuracy"] < needed or not better:
        return [
            f"regression set ({int(ours['n'])} held-out feedback images): accuracy {ours['accuracy']:.4f} "
            f"is not better than the champion's {theirs:.4f}"
            + (f" + {config.min_regression_gain:.4f}" if config.min_regression_gain else "")
        ]
    return []
