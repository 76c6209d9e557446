"""Running an exported model with onnxruntime (no TensorFlow): serving, gate and canaries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup (container) quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


_SHARED_POOL = False


def share_thread_pool(threads: int = 0) -> bool:
    """Make every later session in this process use one process-wide onnxruntime thread pool.

    Serving calls this once at start. A session created later (the next model, built while the
    live one serves) then starts no threads of its own: all inference runs on the same pool,
    instead of two pools of spinning threads fighting for the cores during a swap. Returns
    whether the shared pool is in use (False if this process already made sessions its own way).
    """
    global _SHARED_POOL
    if _SHARED_POOL:
        return True
    from onnxruntime.capi import _pybind_state

    try:
        _pybind_state.set_global_thread_pool_sizes(threads or available_cores(), 1)
    except Exception as exc:  # pools made earlier in this process: keep per-session threads
        if "already been created" not in str(exc):
            return False
    _SHARED_POOL = True
    return True


INPUT_FIT_KEY = "aidetect.input_fit"
BATCH_PIXELS = 2**21


class OnnxModel:
    """An onnxruntime session over a detector exported by ``model.export``."""

    def __init__(self, path: Path | str, *, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if _SHARED_POOL:
            options.use_per_session_threads = False
        else:
            options.intra_op_num_threads = threads or available_cores()
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one uint8 NHWC input, got {[(i.name, i.type) for i in inputs]}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if not (isinstance(shape[1], int) and shape[1] == shape[2] and shape[3] == 3):
            raise ValueError(f"{path}: expected a (batch, size, size, 3) input, got shape {shape}")
        self.image_size = int(shape[1])
        # How preprocessing fits an image to the input (model.preprocess.FITS), written by model.export
        self.input_fit = self.session.get_modelmeta().custom_metadata_map.get(INPUT_FIT_KEY, "resize")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 2:
            raise ValueError(f"{path}: expected two outputs (P(ai), embedding), got {self.output_names}")

    def predict(self, pixels: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, size, size, 3) -> (P(ai) of shape (n,), embeddings of shape (n, d)).

        By default a batch holds at most ``BATCH_PIXELS`` input pixels: 256 thumbnails, but ten
        448-px mosaics (onnxruntime's arena grows to the largest batch's activations: 18 GB at 256).
        """
        batch_size = batch_size or max(1, min(256, BATCH_PIXELS // (self.image_size * self.image_size)))
        scores, embeddings = [], []
        for start in range(0, len(pixels), batch_size):
            p, emb = self.session.run(None, {self.input_name: pixels[start : start + batch_size]})
            scores.append(p.reshape(-1))
            embeddings.append(emb)
        if not scores:
            return np.zeros((0,), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(scores), np.concatenate(embeddings)


def check_canaries(
    model: OnnxModel, canaries: dict[str, np.ndarray], tolerance: float = 1e-4, expected: str = "expected"
) -> float:
    """Run the canary inputs stored at export; return the max abs difference or raise.

    ``expected`` names the recorded outputs to compare with: ``expected`` (the Keras model's,
    for the FP32 file) or ``expected_int8`` (the INT8 file's own, recorded at export).
    """
    scores, _ = model.predict(canaries["inputs"])
    return compare_canaries(scores, canaries, tolerance, expected)


def compare_canaries(
    scores: np.ndarray, canaries: dict[str, np.ndarray], tolerance: float = 1e-4, expected: str = "expected"
) -> float:
    """The max abs difference between ``scores`` and the recorded canary outputs, or ValueError."""
    reference = canaries[expected].reshape(-1)
    if scores.shape != reference.shape:
        raise ValueError(f"canaries gave {scores.shape[0]} scores, {reference.shape[0]} were recorded")
    diff = float(np.max(np.abs(scores - reference))) if len(scores) else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise ValueError(f"canary outputs differ from those recorded at export by {diff:.2e} (> {tolerance:.0e})")
    return diff


def median_latency_ms(model: OnnxModel, pixels: np.ndarray, runs: int = 30) -> float:
    """Median milliseconds to score one image (batch of one), after a warm-up run."""
    import time

    one = pixels[:1]
    model.predict(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(one)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))
