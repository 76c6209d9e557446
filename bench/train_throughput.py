"""Training throughput per architecture and input size, next to plain Keras EfficientNetB5.

Times ``train_on_batch`` (fairness loss, AdamW) on batches already in memory, after warm-up
steps, so the number is the network's; separately times the input pipeline (decode +
augment of real JPEGs in worker threads, no TensorFlow) at each size, to show whether it can
keep the accelerator fed. Runs on whatever Keras backend and device are current: CPU here,
``KERAS_BACKEND=jax`` on a GPU machine. Prints one JSON object.

    .venv/bin/python bench/train_throughput.py [--sizes 224 384] [--batch-size 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_ARCHITECTURES = ["tiny", "effnet-b0", "effnet-b0-swin", "convnext-tiny", "effnetv2s", "effnet-b5-swin"]
BASELINE = "effnet-b5"  # keras.applications.EfficientNetB5 with a pooled head
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake-dev.tar.gz"


def _device() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    return "cpu"


def model_throughput(name: str, size: int, batch_size: int, steps: int, warmup: int, precision: str) -> dict[str, Any]:
    import keras

    from model.architectures import build_model
    from model.config import get_config
    from model.loss import FairnessBCE

    keras.mixed_precision.set_global_policy(precision)
    config = get_config(name, image_size=size)
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=FairnessBCE(alpha=0.1, beta=0.5))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    y = (np.arange(batch_size) % 2).astype("float32")
    started = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(x, y)
    compile_s = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    keras.mixed_precision.set_global_policy("float32")
    step = statistics.median(times)
    return {
        "architecture": name,
        "image_size": size,
        "parameters": int(model.count_params()),
        "first_steps_seconds": round(compile_s, 1),
        "median_step_seconds": round(step, 3),
        "images_per_s": round(batch_size / step, 2),
        "finite_loss": bool(np.isfinite(float(np.asarray(loss).reshape(-1)[0]))),
    }


def _jpegs(n: int) -> list[bytes]:
    if SHARED.exists():
        images = []
        with tarfile.open(SHARED, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    handle = tar.extractfile(member)
                    if handle:
                        images.append(handle.read())
                if len(images) >= n:
                    break
        return images
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def pipeline_throughput(size: int, batch_size: int, workers: int, images: list[bytes]) -> dict[str, Any]:
    from model.augment import AugmentConfig
    from model.imagesets import ImageSet
    from model.train import ImageBatches

    n = len(images)
    data = ImageSet(images, (np.arange(n) % 2).astype("float32"), [str(i) for i in range(n)], ["b"] * n, [""] * n)
    batches = ImageBatches(data, size, batch_size, augment_config=AugmentConfig(), seed=0, workers=workers)
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # as Keras's PyDataset runs them
        count = sum(len(y) for _, y in pool.map(batches.__getitem__, range(len(batches))))
    elapsed = time.perf_counter() - started
    return {"image_size": size, "workers": workers, "images_per_s": round(count / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architectures", nargs="+", default=DEFAULT_ARCHITECTURES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 384])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--pipeline-images", type=int, default=512)
    args = parser.parse_args()

    import keras

    results = []
    for size in args.sizes:
        baseline = model_throughput(BASELINE, size, args.batch_size, args.steps, args.warmup, args.precision)
        results.append({**baseline, "relative_to_baseline": 1.0})
        for name in args.architectures:
            row = model_throughput(name, size, args.batch_size, args.steps, args.warmup, args.precision)
            row["relative_to_baseline"] = round(row["images_per_s"] / baseline["images_per_s"], 3)
            results.append(row)
            print(json.dumps(row), flush=True, file=__import__("sys").stderr)
    images = _jpegs(args.pipeline_images)
    pipeline = [pipeline_throughput(size, 32, os.cpu_count() or 1, images) for size in args.sizes]
    fastest = {size: max(r["images_per_s"] for r in results if r["image_size"] == size) for size in args.sizes}
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "backend": keras.backend.backend(),
                "device": _device(),
                "cpu_count": os.cpu_count(),
                "batch_size": args.batch_size,
                "precision": args.precision,
                "baseline": f"{BASELINE} (keras.applications.EfficientNetB5, pooled head)",
                "results": results,
                "input_pipeline": [
                    {**p, "headroom_over_fastest_model": round(p["images_per_s"] / fastest[p["image_size"]], 2)}
                    for p in pipeline
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
