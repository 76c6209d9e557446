"""The validation gate: is the challenger good enough to replace the champion?"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateConfig:
    max_accuracy_drop: float = 0.02  # challenger may be at most this much worse than the champion
    min_accuracy: float = 0.6  # absolute floor, also for the first model
    max_parity_diff: float = 1e-4  # ONNX vs Keras

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    parity_diff: float,
    config: GateConfig,
) -> Verdict:
    """Compare metrics measured on the same test data; every failed rule is a reason."""
    reasons = []
    if parity_diff > config.max_parity_diff:
        reasons.append(f"ONNX parity {parity_diff:.2e} exceeds {config.max_parity_diff:.0e}")
    if challenger["accuracy"] < config.min_accuracy:
        reasons.append(f"accuracy {challenger['accuracy']:.4f} is below the floor {config.min_accuracy:.4f}")
    if champion is not None and challenger["accuracy"] < champion["accuracy"] - config.max_accuracy_drop:
        reasons.append(
            f"accuracy {challenger['accuracy']:.4f} is worse than the champion's {champion['accuracy']:.4f} "
            f"by more than {config.max_accuracy_drop:.4f}"
        )
    return Verdict(blessed=not reasons, reasons=reasons)
