"""``aidetect model register``: outside models are checked against the serving contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.register import ContractError, register_model_file
from model.registry import Registry
from serving.hotswap import ModelHolder
from storage import LocalStore
from tests.serving.onnx_models import mean_brightness_model


def test_an_outside_onnx_model_is_registered_with_its_canaries_and_serves(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    onnx_path = mean_brightness_model(tmp_path / "outside.onnx", size=48)
    env = {**os.environ, "AIDETECT_HOME": str(tmp_path / "home"), "AIDETECT_STORE_URL": str(store.root)}
    command = [sys.executable, "-m", "cli", "model", "register", str(onnx_path), "--threshold", "0.4"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    version = result.stdout.strip()
    meta = Registry(store).metadata(version)
    assert meta.input_size == 48 and meta.input_fit == "resize" and meta.threshold == 0.4
    assert meta.registered_from is not None and meta.registered_from.kind == "onnx" and meta.embedding_dim == 3
    canaries = Registry(store).canaries(version)
    expected = canaries["inputs"].reshape(len(canaries["inputs"]), -1).mean(axis=1) / 255
    np.testing.assert_allclose(canaries["expected"], expected, atol=1e-6)  # the file's own outputs
    # serving's checks (checksum, shape, warm-up, canaries) accept it
    live = ModelHolder(store, tmp_path / "cache").load_version(version)
    assert live.image_size == 48 and live.card.threshold == 0.4
    assert Registry(store).alias("production")[0] is None  # registered, not promoted


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("float input", "expected one uint8 NHWC input"),
        ("nan output", "must be finite and in [0, 1]"),
        ("not onnx", "onnxruntime cannot load it"),
        ("suffix", "expected a .onnx or .keras file"),
        ("fit", "the file says its input fit is 'resize', not 'mosaic'"),
    ],
)
def test_a_model_that_breaks_the_contract_is_refused_with_the_reason(tmp_path: Path, case: str, words: str) -> None:
    store = LocalStore(tmp_path / "store")
    fit = None
    if case == "float input":
        path = mean_brightness_model(tmp_path / "m.onnx", input_type="float")
    elif case == "nan output":
        path = mean_brightness_model(tmp_path / "m.onnx", nan=True)
    elif case == "not onnx":
        path = tmp_path / "m.onnx"
        path.write_bytes(b"not a model")
    elif case == "suffix":
        path = tmp_path / "m.pt"
        path.write_bytes(b"\x80\x02")
    else:
        path, fit = mean_brightness_model(tmp_path / "m.onnx"), "mosaic"
    with pytest.raises(ContractError, match=words.replace(".", r"\.").replace("[", r"\[").replace("(", r"\(")):
        register_model_file(store, path, input_fit=fit)
    assert Registry(store).versions() == []


def test_a_keras_model_is_exported_checked_for_parity_and_registered(tmp_path: Path) -> None:
    import keras

    from model.architectures import build_model
    from model.config import get_config

    store = LocalStore(tmp_path / "store")
    keras.utils.set_random_seed(0)
    model = build_model(get_config("tiny"))
    model.save(tmp_path / "tiny.keras")
    version = register_model_file(store, tmp_path / "tiny.keras", note="trained elsewhere")
    meta = Registry(store).metadata(version)
    assert meta.registered_from is not None and meta.registered_from.kind == "keras"
    assert meta.note == "trained elsewhere"
    assert meta.parity_max_abs_diff is not None and 0 <= meta.parity_max_abs_diff <= 1e-4
    assert "model.keras" in meta.files
    live = ModelHolder(store, tmp_path / "cache").load_version(version)  # canaries pass in onnxruntime
    pixels = Registry(store).canaries(version)["inputs"]
    np.testing.assert_allclose(live.model.predict(pixels)[0], model.predict(pixels, verbose=0).reshape(-1), atol=1e-4)

    # a Keras model with a float input or two outputs does not meet the contract
    inputs = keras.Input((32, 32, 3), dtype="float32")
    float_input = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    float_input.save(tmp_path / "float.keras")
    with pytest.raises(ContractError, match="must take uint8 pixels"):
        register_model_file(store, tmp_path / "float.keras")
    pixels_in = keras.Input((32, 32, 3), dtype="uint8")
    flat = keras.layers.Flatten()(keras.ops.cast(pixels_in, "float32"))
    two = keras.Model(pixels_in, keras.layers.Dense(2, activation="softmax")(flat))
    two.save(tmp_path / "two.keras")
    with pytest.raises(ContractError, match=r"expected one output of shape \(batch, 1\)"):
        register_model_file(store, tmp_path / "two.keras")
    assert Registry(store).versions() == [version]
