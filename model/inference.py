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


class OnnxModel:
    """An onnxruntime session over a detector exported by ``model.export``."""

    def __init__(self, path: Path | str, *, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
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
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 2:
            raise ValueError(f"{path}: expected two outputs (P(ai), embedding), got {self.output_names}")

    def predict(self, pixels: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, size, size, 3) -> (P(ai) of shape (n,), embeddings of shape (n, d))."""
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
    diff = float(np.max(np.abs(scores - canaries[expected].reshape(-1)))) if len(scores) else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise ValueError(f"canary outputs differ from those recorded at export by {diff:.2e} (> {tolerance:.0e})")
    return diff
