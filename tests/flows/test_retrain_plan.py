"""A retrain's plan: its defaults come from the dataclasses that own them; the training record round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.retrain_plan import gate_config, train_settings
from flows.train import TrainedModel
from model.config import get_config
from model.gate import GateConfig

NONE = {"epochs": None, "batch_size": None, "learning_rate": None, "seed": None, "weights": None}


def test_train_settings_left_at_none_are_train_configs_defaults() -> None:
    from model.train import TrainConfig

    defaults = TrainConfig()
    settings = train_settings(augment=None, **NONE)
    assert settings == {
        "epochs": defaults.epochs,
        "batch_size": defaults.batch_size,
        "learning_rate": defaults.learning_rate,
        "seed": defaults.seed,
        "weights": defaults.weights,
        "augment": defaults.augment,
    }
    given = train_settings(augment=False, **{**NONE, "epochs": 10, "learning_rate": 0.0, "seed": 0})
    assert given["epochs"] == 10 and given["learning_rate"] == 0.0 and given["augment"] is None
    assert train_settings(augment=True, **NONE)["augment"] == {}  # on: the default augmentation
    TrainConfig(**given)  # what train-model builds from them


def test_gate_thresholds_left_at_none_are_gate_configs_defaults() -> None:
    assert gate_config(None, max_accuracy_drop=None, min_accuracy=None) == GateConfig()
    config = gate_config({"max_ece": 0.3, "min_accuracy": 0.1}, max_accuracy_drop=0.1, min_accuracy=0.5)
    assert (config.max_ece, config.min_accuracy, config.max_accuracy_drop) == (0.3, 0.1, 0.1)  # gate: wins
    with pytest.raises(ValueError, match="unknown gate setting"):
        gate_config({"max_eec": 0.3})


def test_a_trained_models_record_round_trips_through_json(tmp_path: Path) -> None:
    trained = TrainedModel(
        tmp_path / "model.keras",
        get_config("tiny"),
        history=[{"loss": 0.5, "val_f1": 0.7}],
        best_epoch=1,
        val_metrics={"accuracy": 0.8},
        beta=0.5,
        seconds=3.5,
        train_images=128,
        stopped_early=False,
    )
    record = json.loads(json.dumps(trained.to_record()))
    assert "keras_path" not in record and record["config"]["name"] == "tiny"
    assert TrainedModel.from_record(record, trained.keras_path) == trained
