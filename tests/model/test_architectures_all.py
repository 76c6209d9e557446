"""Every named architecture builds and runs; custom layers round-trip; training is resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from model.architectures import build_model
from model.config import PRESETS, get_config
from model.imagesets import ArrayData, ImageSet
from model.layers import PatchMerging
from model.loss import FairnessBCE
from tests.helpers import image_bytes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_architecture_builds_and_runs_at_a_tiny_size(name: str) -> None:
    config = get_config(name) if name == "tiny" else get_config(name, image_size=64)
    model = build_model(config)
    x = np.random.default_rng(0).integers(0, 256, (2, config.image_size, config.image_size, 3), dtype=np.uint8)
    p = np.asarray(model(x, training=False))
    assert p.shape == (2, 1)
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


def test_image_size_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        get_config("effnet-b5-swin", image_size=100)


def test_swin_stages_merge_patches_between_stages() -> None:
    model = build_model(get_config("effnet-b5-swin", image_size=128))
    merge = model.get_layer("swin_merge1")
    assert isinstance(merge, PatchMerging)
    assert merge.output.shape[1:] == (4, 4, 512)  # stride 16 -> 32, channels doubled


def test_patch_merging_roundtrips_through_a_keras_file(tmp_path: Path) -> None:
    inputs = keras.Input((4, 4, 8))
    model = keras.Model(inputs, PatchMerging(8, name="merge")(inputs))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_fairness_gradient_pushes_the_mean_prediction_towards_beta() -> None:
    import tensorflow as tf

    loss = FairnessBCE(alpha=10.0, beta=0.5)
    y = tf.constant([[1.0], [0.0], [1.0], [0.0]])
    logits = tf.Variable([[2.0], [1.5], [2.5], [1.0]])  # mean prediction ~0.83, far above beta
    with tf.GradientTape() as tape:
        value = loss(y, tf.sigmoid(logits))
    grad = tape.gradient(value, logits)
    before = float(tf.reduce_mean(tf.sigmoid(logits)))
    after = float(tf.reduce_mean(tf.sigmoid(logits - 0.1 * grad)))
    assert abs(after - 0.5) < abs(before - 0.5)
    plain = FairnessBCE(alpha=0.0)
    with tf.GradientTape() as tape:
        plain_value = plain(y, tf.sigmoid(logits))
    plain_grad = tape.gradient(plain_value, logits)
    # The penalty adds a push down on every logit (the mean is too high).
    assert (grad.numpy() > plain_grad.numpy()).all()


def _toy_set(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype("float32")
    images = [image_bytes(seed=int(s)) for s in rng.integers(0, 10**6, n)]
    return ImageSet(images, y, [str(i) for i in range(n)], ["toy"] * n, [""] * n)


def test_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    from model.train import CHECKPOINT_STATE, TrainConfig, train

    config = get_config("tiny")
    train_set = _toy_set(64, 0)
    val = train_set.decode(32)
    settings = TrainConfig(epochs=1, batch_size=16, patience=5)
    first = train(config, train_set, val, settings, checkpoint_dir=tmp_path, log=lambda _: None)
    state = json.loads((tmp_path / CHECKPOINT_STATE).read_text())
    assert state["epochs_done"] == 1 and len(first.history) == 1
    messages: list[str] = []
    resumed = train(
        config,
        train_set,
        val,
        TrainConfig(epochs=2, batch_size=16, patience=5),
        checkpoint_dir=tmp_path,
        log=messages.append,
    )
    assert any("resuming" in m and "after epoch 1" in m for m in messages)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert json.loads((tmp_path / CHECKPOINT_STATE).read_text())["epochs_done"] == 2


def test_exported_graph_has_no_augmentation_or_randomness(tmp_path: Path) -> None:
    from model.export import export_onnx
    from model.inference import OnnxModel
    from model.train import TrainConfig, train

    config = get_config("tiny")
    train_set = _toy_set(32, 1)
    result = train(config, train_set, train_set.decode(32), TrainConfig(epochs=1, batch_size=16), log=lambda _: None)
    path = export_onnx(result.model, tmp_path / "m.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    random_ops = {op for op in ops if op.startswith("Random") or op in ("Multinomial", "Bernoulli", "Dropout")}
    assert random_ops == set()
    names = " ".join(node.name.lower() for node in onnx.load(str(path)).graph.node)
    for word in ("augment", "flip", "rotation", "zoom", "jpeg"):
        assert word not in names
    x = ArrayData(train_set.decode(32).x, train_set.y, [], [], []).x
    first, _ = OnnxModel(path).predict(x)
    second, _ = OnnxModel(path).predict(x)
    np.testing.assert_array_equal(first, second)


def test_the_same_training_code_runs_on_jax_without_tensorflow(tmp_path: Path) -> None:
    """GPU machines have JAX but no TensorFlow: train a few steps with TensorFlow made unimportable."""
    code = """
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
import keras, numpy as np
assert keras.backend.backend() == "jax"
from model.config import get_config
from model.imagesets import ImageSet
from model.train import TrainConfig, train
from tests.helpers import image_bytes
n = 32
images = [image_bytes(seed=i) for i in range(n)]
data = ImageSet(images, (np.arange(n) % 2).astype("float32"), [str(i) for i in range(n)], ["t"] * n, [""] * n)
result = train(get_config("tiny"), data, data.decode(32), TrainConfig(epochs=2, batch_size=8), log=print)
assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])
print("JAX OK", result.history[-1]["loss"])
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "JAX OK" in done.stdout
