"""Export: conversion time, ONNX size, Keras-vs-ONNX parity, FP32 vs INT8 latency on CPU.

For each architecture (random init: conversion and latency do not depend on the weights;
INT8 is calibrated on random images here, so its accuracy is not measured by this script —
the retrain flow records INT8's accuracy change on the real test split). Prints one JSON object.

    .venv/bin/python bench/export.py [--architectures tiny effnet-b5-swin] [--image-size 224] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _latency_ms(model: Any, x: np.ndarray, rounds: int, repeats: int) -> float:
    model.predict(x)  # warm-up
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            model.predict(x)
        samples.append((time.perf_counter() - started) / repeats * 1000)
    return statistics.median(samples)


def bench(name: str, image_size: int | None, rounds: int, folder: Path) -> dict[str, Any]:
    from model.architectures import build_model
    from model.config import get_config
    from model.export import check_parity, export_onnx, optimize_onnx, quantize_int8
    from model.inference import OnnxModel

    config = get_config(name, **({"image_size": image_size} if image_size and name != "tiny" else {}))
    size = config.image_size
    model = build_model(config)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    raw = export_onnx(model, folder / f"{name}.raw.onnx")
    convert_s = time.perf_counter() - started
    optimized = optimize_onnx(raw, folder / f"{name}.onnx")
    fp32 = OnnxModel(optimized)
    parity = check_parity(model, fp32, rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), tolerance=1.0)
    started = time.perf_counter()
    int8_path = quantize_int8(
        optimized, folder / f"{name}.int8.onnx", rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    )
    quantize_s = time.perf_counter() - started
    int8 = OnnxModel(int8_path)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    repeats = 20 if size <= 64 else 3
    fp32_1, int8_1 = _latency_ms(fp32, one, rounds, repeats), _latency_ms(int8, one, rounds, repeats)
    fp32_16, int8_16 = _latency_ms(fp32, batch, rounds, repeats), _latency_ms(int8, batch, rounds, repeats)
    return {
        "architecture": name,
        "image_size": size,
        "parameters": int(model.count_params()),
        "convert_seconds": round(convert_s, 2),
        "quantize_seconds": round(quantize_s, 2),
        "onnx_mb": round(raw.stat().st_size / 1e6, 2),
        "optimized_onnx_mb": round(optimized.stat().st_size / 1e6, 2),
        "int8_onnx_mb": round(int8_path.stat().st_size / 1e6, 2),
        "parity_max_abs_diff": parity,
        "latency_ms_median": {
            "fp32_batch1": fp32_1,
            "int8_batch1": int8_1,
            "fp32_batch16": fp32_16,
            "int8_batch16": int8_16,
        },
        "int8_speedup": {"batch1": round(fp32_1 / int8_1, 2), "batch16": round(fp32_16 / int8_16, 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architectures", nargs="+", default=["tiny", "effnet-b0-swin", "effnet-b5-swin"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench(name, args.image_size, args.rounds, Path(tmp)) for name in args.architectures]
    print(
        json.dumps(
            {"benchmark": "export", "cpu_count": os.cpu_count(), "rounds": args.rounds, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
