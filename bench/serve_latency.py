"""Serving latency and throughput: the HTTP path against a bare session, a naive server and Keras.

Four ways to answer "is this image AI-generated?" with the same model, each at concurrency
1, 8 and 32, several interleaved rounds (medians reported):

  (a) bare      - onnxruntime ``session.run`` on an already-preprocessed image, in a loop
                  (one thread per concurrent caller), in this process;
  (b) http      - the real service (uvicorn + serving.app): upload, decode off the event loop,
                  micro-batching, calibration, metrics and the prediction log;
  (c) naive     - the same model behind a FastAPI endpoint that runs one session.run per
                  request (bench/_naive_app.py), no batching;
  (d) keras     - the Keras model's ``predict`` on one preprocessed image, in a child process
                  with TensorFlow (never imported here: it slows onnxruntime down).

Also: (a) on full batches of 16, the ceiling any batching can reach on this CPU.

The load generator runs in this process on the same cores as the servers: the HTTP numbers
include its cost, for (b) and (c) alike. Prints one JSON object.

    .venv/bin/python bench/serve_latency.py [--architecture effnet-lite0-multiscale] [--upload-side 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._serving import (  # noqa: E402
    ROOT,
    LoadResult,
    export_model,
    load,
    median_of,
    register,
    start_server,
    test_image,
)
from model.config import get_config  # noqa: E402

LEVELS = (1, 8, 32)

_KERAS = r"""
import json, os, sys, threading, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
import model.layers  # registers the custom layers
from model.preprocess import preprocess
net = keras.saving.load_model(sys.argv[1], compile=False)
data = open(sys.argv[2], "rb").read()
levels = json.loads(sys.argv[3])
pixels = preprocess(data, net.input_shape[1], sys.argv[4])[None]
net.predict(pixels, verbose=0)
out = {}
for concurrency, requests in levels:
    latencies, lock = [], threading.Lock()
    remaining = [requests]
    def worker():
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            net.predict(pixels, verbose=0)
            with lock:
                latencies.append(time.perf_counter() - t0)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    out[str(concurrency)] = {"latencies": latencies, "elapsed": time.perf_counter() - started}
print(json.dumps(out))
"""


def bare(model_path: Path, image: bytes, concurrency: int, requests: int) -> LoadResult:
    """(a): session.run on a preprocessed image, ``concurrency`` threads sharing the session."""
    from model.inference import OnnxModel
    from model.preprocess import preprocess

    model = OnnxModel(model_path)
    pixels = preprocess(image, model.image_size, model.input_fit)[None]
    model.predict(pixels)
    result = LoadResult()
    lock = threading.Lock()
    remaining = [requests]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            model.session.run(None, {model.input_name: pixels})
            with lock:
                result.latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.elapsed = time.perf_counter() - started
    return result


def bare_batched(model_path: Path, image: bytes, batch: int = 16, repeats: int = 8) -> float:
    """Images/s of session.run on full batches: the most any batching can get from this CPU."""
    from model.inference import OnnxModel
    from model.preprocess import preprocess

    model = OnnxModel(model_path)
    pixels = np.repeat(preprocess(image, model.image_size, model.input_fit)[None], batch, axis=0)
    model.predict(pixels)
    started = time.perf_counter()
    for _ in range(repeats):
        model.session.run(None, {model.input_name: pixels})
    return batch * repeats / (time.perf_counter() - started)


def keras_predict(keras_path: Path, image_path: Path, plan: list[tuple[int, int]], fit: str) -> dict[int, LoadResult]:
    """(d): one child process with TensorFlow, all concurrency levels."""
    proc = subprocess.run(
        [sys.executable, "-c", _KERAS, str(keras_path), str(image_path), json.dumps(plan), fit],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(c): LoadResult(latencies=v["latencies"], elapsed=v["elapsed"]) for c, v in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from model.config import DEFAULT_ARCHITECTURE

    parser.add_argument("--architecture", default=DEFAULT_ARCHITECTURE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64, help="requests per level at concurrency 1 (x4 at 8, 32)")
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument("--upload-side", type=int, default=512, help="side of the uploaded JPEG (0: the input size)")
    args = parser.parse_args()
    plan = [(c, args.requests if c == 1 else args.requests * 4) for c in LEVELS]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(f"exporting {args.architecture} ...", file=sys.stderr, flush=True)
        size = export_model(args.architecture, tmp / "model")
        register(tmp / "store", tmp / "model", size)
        image = test_image(args.upload_side or size)  # 512 px: the size of newgen-dev's images
        (tmp / "image.jpg").write_bytes(image)
        env = {
            "AIDETECT_HOME": str(tmp / "home"),
            "AIDETECT_STORE_URL": str(tmp / "store"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        http = start_server("serving.app:create_app", env, tmp / "http.log")
        naive = start_server(
            "bench._naive_app:create_app", {"BENCH_MODEL": str(tmp / "model/model.onnx")}, tmp / "naive.log"
        )
        ceiling: list[float] = []
        rounds: dict[str, dict[int, list[dict[str, float]]]] = {
            m: {c: [] for c in LEVELS} for m in ("bare", "http", "naive", "keras")
        }
        try:
            for round_index in range(args.rounds):
                print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
                ceiling.append(bare_batched(tmp / "model/model.onnx", image))
                for concurrency, requests in plan:
                    rounds["bare"][concurrency].append(
                        bare(tmp / "model/model.onnx", image, concurrency, requests).summary()
                    )
                    for name, url in (("http", http.url + "/v1/predict"), ("naive", naive.url + "/predict")):
                        asyncio.run(load(url, image, concurrency, requests=max(8, requests // 8)))  # warm
                        result = asyncio.run(load(url, image, concurrency, requests=requests))
                        rounds[name][concurrency].append(result.summary())
                if not args.skip_keras:
                    for concurrency, result in keras_predict(
                        tmp / "model/model.keras", tmp / "image.jpg", plan, get_config(args.architecture).input_fit
                    ).items():
                        rounds["keras"][concurrency].append(result.summary())
            served = httpx_get_json(http.url + "/metrics")
        finally:
            http.stop()
            naive.stop()

    med = {m: {c: median_of(r) for c, r in levels.items() if r} for m, levels in rounds.items()}
    ratios = {
        "http_over_bare_p50_c1": round(med["http"][1]["p50_ms"] / med["bare"][1]["p50_ms"], 3),
        "http_over_naive_throughput_c32": round(
            med["http"][32]["throughput_rps"] / med["naive"][32]["throughput_rps"], 2
        ),
    }
    ratios["batching_ceiling_bare_b16_over_bare_c1"] = round(
        statistics.median(ceiling) / med["bare"][1]["throughput_rps"], 2
    )
    targets = {
        "http_adds_at_most_15pct_to_bare_at_c1": ratios["http_over_bare_p50_c1"] <= 1.15,
        "batching_at_least_1.5x_naive_at_c32": ratios["http_over_naive_throughput_c32"] >= 1.5,
    }
    if med["keras"]:
        ratios["http_over_keras_throughput"] = {
            str(c): round(med["http"][c]["throughput_rps"] / med["keras"][c]["throughput_rps"], 2) for c in LEVELS
        }
        ratios["keras_over_http_p50_c1"] = round(med["keras"][1]["p50_ms"] / med["http"][1]["p50_ms"], 2)
        targets["http_beats_keras_3x"] = min(ratios["http_over_keras_throughput"].values()) >= 3
    print(
        json.dumps(
            {
                "benchmark": "serve_latency",
                "architecture": args.architecture,
                "image_size": size,
                "cpu_count": os.cpu_count(),
                "rounds": args.rounds,
                "requests_per_level": dict((str(c), n) for c, n in plan),
                "median_over_rounds": {m: {str(c): v for c, v in levels.items()} for m, levels in med.items()},
                "bare_batch16_images_per_s": round(statistics.median(ceiling), 1),
                "ratios": ratios,
                "targets_met": targets,
                "server_batch_size": served,
            },
            indent=2,
        )
    )


def httpx_get_json(url: str) -> dict[str, float]:
    """The mean micro-batch size the service ran, from its /metrics."""
    import httpx

    text = httpx.get(url, timeout=10).text
    values = {}
    for line in text.splitlines():
        for name in ("aidetect_inference_batch_size_sum", "aidetect_inference_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    count = values.get("aidetect_inference_batch_size_count", 0)
    return {
        "runs": count,
        "mean_images_per_run": round(values.get("aidetect_inference_batch_size_sum", 0) / count, 2) if count else 0,
    }


if __name__ == "__main__":
    main()
