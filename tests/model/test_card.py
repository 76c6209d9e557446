"""The model card: typed, written by the registry, and old ``metadata.json`` files still load."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from model.card import INT8_FILE, ONNX_FILE, GateRecord, Int8Variant, ModelCard
from model.registry import Registry
from storage import LocalStore

# What retrain registered on 2026-11-25 (f10c8a6), before the card: no input_fit, no
# calibration, no files, no INT8 variant, no weights origin.
OLD_METADATA = {
    "config": {"name": "tiny", "image_size": 32},
    "input_size": 32,
    "class_names": ["real", "ai"],
    "threshold": 0.5,
    "datasets": ["cifake@20261125T101010000000Z-aaaaaa"],
    "parent_version": None,
    "warm_started_from": None,
    "train": {"epochs": 2, "alpha": 0.1, "beta": 0.5, "images": 1200, "seconds": 31.5},
    "history": [{"epoch": 1, "loss": 0.7, "val_loss": 0.69}, {"epoch": 2, "loss": 0.5, "val_loss": 0.55}],
    "best_epoch": 1,
    "metrics": {"val": {"accuracy": 0.8}, "test": {"accuracy": 0.79, "ece": 0.05}},
    "champion_metrics": None,
    "parity_max_abs_diff": 2.1e-07,
    "gate": {"config": {"min_accuracy": 0.6}, "blessed": True, "reasons": []},
    "code_version": "0.1.0+f10c8a6",
    "version": "20261125T120000000000Z-bbbbbb",
    "registered_at": "2026-11-25T12:00:00+00:00",
    "sha256": "ab" * 32,
    "something_only_it_had": {"kept": True},
}


def test_an_old_metadata_json_loads_into_the_card() -> None:
    card = ModelCard.model_validate_json(json.dumps(OLD_METADATA))
    assert card.version == OLD_METADATA["version"] and card.input_size == 32
    # what it lacks takes the defaults readers used to assume
    assert card.input_fit == "resize" and card.temperature == 1.0 and card.uncertain_band is None
    assert card.files == {ONNX_FILE: "ab" * 32}  # the ONNX file, by the sha256 it did record
    assert card.file_for("fp32") == (ONNX_FILE, "ab" * 32)
    with pytest.raises(KeyError, match="no int8 variant"):
        card.file_for("int8")
    assert card.blessed and card.beta == 0.5 and card.name == "tiny"
    assert card.metrics.test == {"accuracy": 0.79, "ece": 0.05} and card.gate is not None and card.gate.notes == []
    assert card.calibration(0.7) == ("ai", pytest.approx(0.7, abs=1e-6))
    # nothing it held is lost: unknown keys survive a round trip
    again = json.loads(card.to_json())
    assert again["something_only_it_had"] == {"kept": True}
    assert ModelCard.model_validate_json(card.to_json()) == card


def test_a_card_without_an_input_size_is_refused() -> None:
    with pytest.raises(ValidationError, match="input_size"):
        ModelCard.model_validate({"threshold": 0.5})


def test_register_writes_the_card_and_metadata_reads_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry = Registry(LocalStore(tmp_path / "store"))
    card = ModelCard(
        input_size=64,
        input_fit="mosaic",
        temperature=1.5,
        uncertain_band=(0.4, 0.6),
        int8=Int8Variant(test_accuracy=0.9, accuracy_change=-0.01),
        gate=GateRecord(blessed=False, reasons=["accuracy 0.5 is below 0.6"]),
        datasets=["cifake@v1", "feedback@v2"],
    )
    version = registry.register({ONNX_FILE: b"fp32", INT8_FILE: b"int8"}, card)
    read = registry.metadata(version)
    assert read.version == version and read.sha256 == hashlib.sha256(b"fp32").hexdigest()
    assert read.file_for("int8") == (INT8_FILE, hashlib.sha256(b"int8").hexdigest())
    assert read.calibration(0.5) == ("uncertain", pytest.approx(0.5))
    assert read.calibration(0.9)[0] == "ai" and read.calibration(0.1)[0] == "real"
    assert not read.blessed and read.gate is not None and read.gate.reasons == ["accuracy 0.5 is below 0.6"]
    assert read.model_dump(exclude={"version", "registered_at", "sha256", "files"}) == card.model_dump(
        exclude={"version", "registered_at", "sha256", "files"}
    )
