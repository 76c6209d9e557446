"""ONNX export: the file reproduces Keras within 1e-4, and canaries catch a wrong file."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.export import check_parity
from model.inference import OnnxModel, check_canaries
from tests.conftest import Trained


def test_onnx_matches_keras_within_1e_4(trained_tiny: Trained) -> None:
    model = keras.saving.load_model(trained_tiny.keras_path, compile=False)
    onnx_model = OnnxModel(trained_tiny.onnx_path)
    x = trained_tiny.val_x[:128]
    keras_p = np.asarray(model.predict(x, verbose=0)).reshape(-1)
    onnx_p, embedding = onnx_model.predict(x)
    assert np.max(np.abs(keras_p - onnx_p)) < 1e-4
    assert embedding.shape == (len(x), 64)
    assert check_parity(model, onnx_model, x) < 1e-4
    assert keras_p.std() > 1e-3  # a trained model, not a constant


def test_onnx_file_has_uint8_input_and_two_outputs(trained_tiny: Trained) -> None:
    onnx_model = OnnxModel(trained_tiny.onnx_path)
    assert onnx_model.image_size == 32
    assert onnx_model.output_names == ["p_ai", "embedding"]


def test_canaries_pass_on_the_file_and_fail_on_other_outputs(trained_tiny: Trained) -> None:
    onnx_model = OnnxModel(trained_tiny.onnx_path)
    assert check_canaries(onnx_model, trained_tiny.canaries) < 1e-4
    wrong = dict(trained_tiny.canaries, expected=trained_tiny.canaries["expected"] + 0.01)
    with pytest.raises(ValueError, match="canary"):
        check_canaries(onnx_model, wrong)
