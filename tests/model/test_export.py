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
    assert OnnxModel(trained_tiny.onnx_path, tile_shortcut=True).tiles is None  # not a mosaic: no shortcut
    from model.inference import tile_graph

    assert tile_graph(trained_tiny.onnx_path) is None  # and no tiling to cut out of it


def test_canaries_pass_on_the_file_and_fail_on_other_outputs(trained_tiny: Trained) -> None:
    onnx_model = OnnxModel(trained_tiny.onnx_path)
    assert check_canaries(onnx_model, trained_tiny.canaries) < 1e-4
    wrong = dict(trained_tiny.canaries, expected=trained_tiny.canaries["expected"] + 0.01)
    with pytest.raises(ValueError, match="canary"):
        check_canaries(onnx_model, wrong)


def test_calibration_images_are_spread_over_datasets_and_labels() -> None:
    from model.export import calibration_sample

    datasets = ["cifake"] * 200 + ["feedback"] * 6
    y = np.array([i % 2 for i in range(200)] + [0, 1, 0, 1, 1, 0], np.float32)
    chosen = calibration_sample(datasets, y, 8, seed=3)
    assert len(chosen) == len(set(chosen.tolist())) == 8
    groups = [(datasets[i], int(y[i])) for i in chosen]
    # round-robin: each of the four (dataset, label) groups twice, and any prefix of 4 holds all four
    assert sorted(set(groups)) == [("cifake", 0), ("cifake", 1), ("feedback", 0), ("feedback", 1)]
    assert all(groups.count(g) == 2 for g in set(groups))
    assert len(set(groups[:4])) == 4
    assert len(calibration_sample(datasets, y, 1000)) == 206  # never more than there are
    np.testing.assert_array_equal(calibration_sample(datasets, y, 8, seed=3), chosen)
    with pytest.raises(ValueError, match="datasets for"):
        calibration_sample(datasets[:5], y, 8)


def test_int8_calibration_in_passes_gives_the_one_pass_ranges(trained_tiny: Trained, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The calibrator keeps every intermediate tensor of a pass, so large inputs go in passes whose
    # min/max ranges onnxruntime merges: the quantised file must not depend on how many passes.
    import onnx

    import model.export as export

    pixels = trained_tiny.val_x[:12]
    one = export.quantize_int8(trained_tiny.onnx_path, tmp_path / "one.onnx", pixels, batch_size=2)
    monkeypatch.setattr(export, "CALIBRATION_PASS_PIXELS", 2 * 2 * 32 * 32)  # passes of two batches of two
    passes = export.quantize_int8(trained_tiny.onnx_path, tmp_path / "passes.onnx", pixels, batch_size=2)
    first = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(one)).graph.initializer}
    second = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(passes)).graph.initializer}
    assert first.keys() == second.keys()
    scales = [name for name in first if name.endswith("_scale")]
    assert len(scales) > 10
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # and a single batch of the first four images alone gives other ranges: the passes were all used
    few = export.quantize_int8(trained_tiny.onnx_path, tmp_path / "few.onnx", pixels[:4], batch_size=2)
    third = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(few)).graph.initializer}
    assert any(not np.array_equal(first[n], third[n]) for n in scales)
