"""What writing a prediction to the store (recent/ + history/, serving.shared) costs ``POST /v1/predict``.

In-process (FastAPI's TestClient, real onnxruntime, the mean-brightness model, a 256x256 PNG),
alternating requests with the store writes on and with them skipped (the baseline, measured in
the same run), on a local folder store and on an S3 server (moto on loopback). Prints JSON.

    .venv/bin/python bench/recent_store_write.py --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.app import create_app  # noqa: E402
from serving.shared import StoreWrites  # noqa: E402
from storage import ObjectStore  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.serving.test_browser import synthetic_image  # noqa: E402
from tests.serving.test_hardening import mean_model_store, settings_for  # noqa: E402


def _quantiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2), "mean_ms": round(statistics.mean(samples), 2)}


def measure(tmp: Path, shared_store: ObjectStore | None, requests: int) -> dict[str, object]:
    served = mean_model_store(tmp)
    image = synthetic_image()
    timings: dict[str, list[float]] = {"with_write": [], "baseline": []}
    with TestClient(create_app(settings_for(tmp, served, prediction_log=False))) as client:
        state = client.app.state.serving  # type: ignore[attr-defined]
        if shared_store is not None:
            state.store = shared_store
        paused = StoreWrites(pause_seconds=1e9)
        paused.failed()
        writing = StoreWrites()
        for _ in range(10):  # warm-up
            client.post("/v1/predict", files={"file": ("x.png", image)})
        for i in range(2 * requests):
            kind = "with_write" if i % 2 else "baseline"
            state.store_writes = writing if kind == "with_write" else paused
            started = time.perf_counter()
            assert client.post("/v1/predict", files={"file": ("x.png", image)}).status_code == 200
            timings[kind].append((time.perf_counter() - started) * 1000)
    result: dict[str, object] = {k: _quantiles(v) for k, v in timings.items()}
    result["added_p50_ms"] = round(statistics.median(timings["with_write"]) - statistics.median(timings["baseline"]), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind")
    args = parser.parse_args()
    out: dict[str, object] = {"requests": args.requests, "image_bytes": len(synthetic_image())}
    with tempfile.TemporaryDirectory() as folder:
        out["local"] = measure(Path(folder) / "local", None, args.requests)
        from moto.server import ThreadedMotoServer

        from storage.s3 import S3Store

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            s3 = S3Store("bench", "x", endpoint_url=f"http://127.0.0.1:{port}")
            s3.ensure_bucket()
            out["moto_s3"] = measure(Path(folder) / "s3", s3, args.requests)
        finally:
            server.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
