"""Inference latency of the exported ONNX model (what serving runs) vs Keras (the baseline).

Builds the tiny architecture (random init: latency does not depend on the weights), exports
it, and times single-image and batch-64 predictions in onnxruntime and in Keras, in this
process, several rounds each. Prints one JSON object with medians and the speed-up ratios.

    .venv/bin/python bench/onnx_vs_keras.py [--architecture tiny] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    import keras

    from model.architectures import build_model
    from model.config import get_config
    from model.export import export_onnx
    from model.inference import OnnxModel

    config = get_config(args.architecture)
    model = build_model(config)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_model = OnnxModel(export_onnx(model, Path(tmp) / "model.onnx"))
    rng = np.random.default_rng(0)
    size = config.image_size
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    results: dict[str, list[float]] = {k: [] for k in ("onnx_1", "keras_1", "onnx_64", "keras_64")}
    for _ in range(args.rounds):
        results["onnx_1"].append(_time(lambda: onnx_model.predict(one), args.repeats))
        results["keras_1"].append(_time(lambda: model(one, training=False), args.repeats))
        results["onnx_64"].append(_time(lambda: onnx_model.predict(batch), max(1, args.repeats // 10)))
        results["keras_64"].append(_time(lambda: model(batch, training=False), max(1, args.repeats // 10)))
    median = {k: statistics.median(v) for k, v in results.items()}
    print(
        json.dumps(
            {
                "benchmark": "onnx_vs_keras",
                "architecture": args.architecture,
                "image_size": size,
                "keras_backend": keras.backend.backend(),
                "cpu_count": os.cpu_count(),
                "rounds": args.rounds,
                "median_ms": {k: round(v * 1000, 3) for k, v in median.items()},
                "images_per_s_batch64": {
                    "onnx": round(64 / median["onnx_64"], 1),
                    "keras": round(64 / median["keras_64"], 1),
                },
                "speedup_onnx_over_keras": {
                    "single": round(median["keras_1"] / median["onnx_1"], 2),
                    "batch64": round(median["keras_64"] / median["onnx_64"], 2),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
