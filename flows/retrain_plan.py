"""What one ``retrain`` run does, decided once from its parameters, and what its training produced.

A parameter left at None takes the default of the place that owns it: the training settings
from ``model.train.TrainConfig``, the gate's thresholds from ``model.gate.GateConfig``, the
alias from the settings. The retrain steps (``flows.validate``, ``flows.register``) read the
plan, never the flow's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.train import TrainedModel
from model.card import ModelCard
from model.config import ModelConfig, get_config
from model.gate import GateConfig


@dataclass(frozen=True)
class RetrainPlan:
    """A retrain's settings, every default resolved (see ``flows.retrain.retrain``)."""

    datasets: list[str] | None  # None: the latest version of every dataset
    architecture: str
    image_size: int | None  # None: the architecture's
    train_settings: dict[str, Any]  # model.train.TrainConfig fields, for training from scratch
    max_train_images: int | None
    min_dataset_share: float
    warm_start: bool
    warm_start_lr_scale: float
    gate: GateConfig
    feedback_dataset: str
    test_datasets: list[str] | None
    uncertain_target_accuracy: float
    max_uncertain_share: float
    reference_images: int
    alias: str
    auto_promote: bool
    train_deployment: str | None
    fallback_deployment: str | None
    train_timeout_hours: float
    reason: str
    store_url: str | None

    def model_config(self) -> ModelConfig:
        """The architecture's settings at the planned input size."""
        return get_config(self.architecture, **({"image_size": self.image_size} if self.image_size else {}))


def train_settings(*, augment: bool | None, **given: Any) -> dict[str, Any]:
    """``model.train.TrainConfig`` fields: each of ``given`` that is not None, else TrainConfig's default.

    ``augment``: True for the default augmentation, False for none, None for TrainConfig's default.
    """
    from model.train import TrainConfig  # imports keras: when a run starts, not with the flows

    defaults = TrainConfig().to_dict()
    settings = {name: defaults[name] if value is None else value for name, value in given.items()}
    settings["augment"] = defaults["augment"] if augment is None else ({} if augment else None)
    return settings


def gate_config(gate: dict[str, float] | None, **thresholds: float | None) -> GateConfig:
    """``model.gate.GateConfig`` from ``thresholds`` that are not None, then ``gate`` (which wins)."""
    return GateConfig.from_dict({k: v for k, v in thresholds.items() if v is not None} | (gate or {}))


@dataclass(frozen=True)
class Champion:
    """The version the alias names when a retrain starts: its card and a local copy of its ONNX file."""

    version: str
    card: ModelCard
    onnx: Path


@dataclass(frozen=True)
class Challenger:
    """The model a retrain trained, and how it was trained."""

    refs: list[str]  # the training datasets, ``name@version``
    config: ModelConfig
    trained: TrainedModel
    warm_started_from: str | None  # the champion's version, or None (trained from ``weights``)
    train_settings: dict[str, Any]  # as trained: the learning rate scaled for a warm start
