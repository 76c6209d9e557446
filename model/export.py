"""ONNX export with tf2onnx (TensorFlow backend only), checked against Keras."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from model.architectures import OUTPUT_NAME, with_embedding
from model.inference import INPUT_FIT_KEY, OnnxModel

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ParityError(ValueError):
    """The ONNX file does not reproduce the Keras model."""


def export_onnx(model: keras.Model, path: Path, opset: int = OPSET, *, input_fit: str = "resize") -> Path:
    """Write ``model`` (with its embedding as a second output) to ``path`` as ONNX.

    ``input_fit`` (how preprocessing fits an image to the input) is written into the file's
    metadata, so whoever runs the file feeds it as it was trained (``OnnxModel.input_fit``).
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("ONNX export needs KERAS_BACKEND=tensorflow (tf2onnx converts TF graphs)")
    import tensorflow as tf
    import tf2onnx

    size = model.input_shape[1]
    exported = with_embedding(model)
    exported.output_names = [OUTPUT_NAME, "embedding"]
    spec = [tf.TensorSpec((None, size, size, 3), tf.uint8, name="pixels")]
    path.parent.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_keras(exported, input_signature=spec, opset=opset, output_path=str(path))
    _set_metadata(path, {INPUT_FIT_KEY: input_fit})
    return path


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    kept = {p.key: p.value for p in graph.metadata_props} | values
    del graph.metadata_props[:]
    for key, value in kept.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def check_parity(
    model: keras.Model, onnx_model: OnnxModel, pixels: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> float:
    """Max abs difference of P(ai) between Keras and onnxruntime on ``pixels``; raises above tolerance."""
    expected = np.asarray(model.predict(pixels, verbose=0)).reshape(-1)
    actual, _ = onnx_model.predict(pixels)
    diff = float(np.max(np.abs(expected - actual)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(f"ONNX differs from Keras by {diff:.2e} (tolerance {tolerance:.0e})")
    return diff


def make_canaries(model: keras.Model, sample: np.ndarray, n_noise: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Canary inputs (real images + noise) with the Keras model's outputs on them.

    Stored with the version: the export's parity check runs the ONNX file on them, and so
    does every serving replica before it swaps the model in.
    """
    rng = np.random.default_rng(seed)
    size = model.input_shape[1]
    noise = rng.integers(0, 256, size=(n_noise, size, size, 3), dtype=np.uint8)
    inputs = np.concatenate([sample.astype(np.uint8), noise]) if len(sample) else noise
    expected = np.asarray(model.predict(inputs, verbose=0)).reshape(-1)
    return {"inputs": inputs, "expected": expected.astype(np.float32)}


def optimize_onnx(source: Path, target: Path) -> Path:
    """Offline graph optimisation (constant folding, redundant nodes) that stays portable.

    onnxruntime applies its hardware-specific optimisations again when a session loads.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    _set_metadata(target, _metadata(source))
    return target


# Layers whose ONNX nodes stay in float32. The input stage, elementwise work on every input pixel
# (normalisation, the noise residual): quantised, onnxruntime ran them as QLinearAdd/QLinearMul at
# 24 ms of a 77 ms 448-px mosaic (FP32: 3 ms), and a uint8 noise residual loses the very traces
# it is there for. And the multiscale head: next to no compute, and its standardisation scales
# features up, rounding errors with them. Substrings of node names: tf2onnx names nodes by Keras
# layer (model.architectures: "normalize", "lite_normalize", "residual", the "head" model; not
# the "pool_residual_*" pooling nor EfficientNet-Lite's "lite_head_relu").
FLOAT_LAYERS = ("normalize", "/residual_", "/head_")


def float_nodes(path: Path) -> list[str]:
    """The nodes of ``path`` that ``quantize_int8`` leaves in float32 (``FLOAT_LAYERS``)."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if any(w in n.name for w in FLOAT_LAYERS)]


# Images the INT8 calibration runs per pass for large inputs: onnxruntime's calibrator keeps every
# intermediate tensor of every image of a pass (about 0.4 GB per 448-px mosaic), and merges the
# passes' ranges (min of the minima, max of the maxima).
CALIBRATION_PASS_PIXELS = 4 * 448 * 448


def calibration_sample(datasets: list[str], y: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` images for INT8 calibration, spread over (dataset, label) groups.

    Round-robin over the groups (each shuffled with ``seed``), so a few hundred thumbnails of
    the base data cannot crowd out the feedback's photos: activation ranges calibrated on
    32-px thumbnails alone clipped what large photos produce (newgen accuracy 100% -> 50%).
    In round-robin order: any prefix is spread too.
    """
    labels = np.asarray(y).reshape(-1) >= 0.5
    if len(datasets) != len(labels):
        raise ValueError(f"{len(datasets)} datasets for {len(labels)} labels")
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, key in enumerate(zip(datasets, labels.tolist(), strict=True)):
        groups.setdefault(key, []).append(i)
    queues = [list(rng.permutation(groups[key])) for key in sorted(groups)]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return np.array(chosen, dtype=np.int64)


def quantize_int8(source: Path, target: Path, calibration: np.ndarray, batch_size: int | None = None) -> Path:
    """Static INT8 quantisation (QDQ), activation ranges calibrated on real images; the input
    stage (``FLOAT_LAYERS``) stays in float32.

    Static rather than dynamic: dynamic quantisation of convolutions runs ConvInteger,
    which was slower than FP32 on CPU here. Large inputs are calibrated in passes of
    ``CALIBRATION_PASS_PIXELS`` (the calibrator holds a pass's every intermediate tensor),
    whose ranges onnxruntime merges.
    """
    from model.inference import BATCH_PIXELS

    side = int(calibration.shape[1]) if calibration.ndim == 4 else 1
    step = batch_size or max(1, min(16, BATCH_PIXELS // (side * side), CALIBRATION_PASS_PIXELS // (side * side)))
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = [{"pixels": calibration[i : i + step]} for i in range(0, len(calibration), step)]
    if not batches:
        raise ValueError("INT8 calibration needs at least one image")
    # onnxruntime's strided calibration: a pass of `stride` batches at a time (the count must divide)
    per_pass = max(1, CALIBRATION_PASS_PIXELS // (side * side * step))
    stride = max(k for k in range(1, min(per_pass, len(batches)) + 1) if len(batches) % k == 0)

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(batches[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(source),
        str(target),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=float_nodes(source),
        extra_options={"CalibStridedMinMax": stride} if stride < len(batches) else {},
    )
    _set_metadata(target, _metadata(source))
    return target
