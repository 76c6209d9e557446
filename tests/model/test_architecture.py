"""EfficientNet + Swin: shapes, shifted-window masks, serialisation round-trips."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from model.architectures import build_model, with_embedding
from model.config import get_config
from model.layers import SwinBlock, _shift_attention_mask


def test_tiny_model_maps_uint8_images_to_probabilities() -> None:
    model = build_model(get_config("tiny"))
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    p = np.asarray(model.predict(x, verbose=0))
    assert p.shape == (3, 1)
    assert ((p > 0) & (p < 1)).all()
    p_again, embedding = with_embedding(model).predict(x, verbose=0)
    np.testing.assert_allclose(p_again, p, atol=1e-6)
    assert embedding.shape == (3, get_config("tiny").swin_dim)


def test_tiny_model_has_a_shifted_window_block() -> None:
    model = build_model(get_config("tiny"))
    blocks = [layer for layer in model.layers if isinstance(layer, SwinBlock)]
    assert [b.shift for b in blocks] == [0, 2]


def test_shift_mask_separates_wrapped_regions() -> None:
    mask = _shift_attention_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert (mask[3] < 0).any()  # the bottom-right window mixes wrapped-around regions
    np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))


def test_swin_block_config_roundtrip() -> None:
    block = SwinBlock(16, 2, 4, shift=2, mlp_ratio=2.0, dropout=0.1, name="b")
    again = SwinBlock.from_config(block.get_config())
    assert again.get_config() == block.get_config()


def test_model_roundtrips_through_a_keras_file(tmp_path: Path) -> None:
    model = build_model(get_config("tiny"))
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_weights_file_is_loaded(tmp_path: Path) -> None:
    model = build_model(get_config("tiny"))
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    other = build_model(get_config("tiny"), weights=path)
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        build_model(get_config("tiny"), weights=tmp_path / "missing.weights.h5")


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        get_config("nope")
