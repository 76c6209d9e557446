"""A bounded soak test: real serving (uvicorn, a real exported model) under a steady mixed load.

For ``--minutes`` it drives ``--concurrency`` clients posting single predictions and batches, and two
clients (127.0.0.1 and 127.0.0.2) posting feedback paced under the server's per-client rate limit
(``AIDETECT_FEEDBACK_PER_MINUTE`` / ``AIDETECT_FEEDBACK_BURST``, set here). Every ``--sample-seconds``
it samples the server's RSS (/proc) and the window's requests, errors by status and p50/p99 latency.
At the end it stops the server (which flushes the prediction log) and counts what reached the store.

Prints one JSON object: totals, errors, RSS start/end/max and its slope over the second half (MB a
minute: a leak shows as a steady positive slope), per-window latencies, the first minute against the
last, and the prediction-log files/rows and feedback records written.

    .venv/bin/python bench/soak.py                 # 10 minutes, the tiny architecture
    .venv/bin/python bench/soak.py --minutes 1     # a quick check that it works
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._serving import Server, export_model, percentile, register, start_server, test_image  # noqa: E402

CLIENTS = ("127.0.0.1", "127.0.0.2")


@dataclass
class Sample:
    at: float  # seconds since the load started
    kind: str
    status: int  # 0: no answer (connection error, timeout)
    latency: float


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    prediction_ids: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CLIENTS})
    predictions_ok: int = 0  # images that got a verdict (single + batch items)
    batch_item_errors: int = 0
    feedback_ids: list[str] = field(default_factory=list)


def _client(base_url: str, address: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(local_address=address, limits=limits)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60)


async def _timed(run: Run, started: float, kind: str, send: Any) -> httpx.Response | None:
    t0 = time.perf_counter()
    try:
        response: httpx.Response | None = await send()
    except httpx.HTTPError:
        response = None
    t1 = time.perf_counter()
    run.samples.append(Sample(t1 - started, kind, response.status_code if response is not None else 0, t1 - t0))
    return response


async def _predictor(
    run: Run, client: httpx.AsyncClient, address: str, images: list[bytes], end: float, started: float, batch: int
) -> None:
    rng = random.Random(hash(address) ^ id(client))
    while time.perf_counter() < end:
        if rng.random() < 0.2:  # a batch of `batch` images
            files = [("files", (f"{i}.jpg", rng.choice(images), "image/jpeg")) for i in range(batch)]
            response = await _timed(run, started, "batch", lambda f=files: client.post("/v1/predict/batch", files=f))
            if response is not None and response.status_code == 200:
                for item in response.json()["results"]:
                    if "id" in item:
                        run.predictions_ok += 1
                        run.prediction_ids[address].append(item["id"])
                    else:
                        run.batch_item_errors += 1
        else:
            image = rng.choice(images)
            response = await _timed(
                run,
                started,
                "predict",
                lambda i=image: client.post("/v1/predict", files={"file": ("x.jpg", i, "image/jpeg")}),
            )
            if response is not None and response.status_code == 200:
                run.predictions_ok += 1
                run.prediction_ids[address].append(response.json()["id"])
        ids = run.prediction_ids[address]
        del ids[:-100]  # the recent ones are enough to refer to


async def _feedback(
    run: Run,
    client: httpx.AsyncClient,
    address: str,
    images: list[bytes],
    end: float,
    started: float,
    per_minute: float,
) -> None:
    """Paced at 80% of the per-client limit: every 429 is an error, not an expected refusal."""
    interval = 60 / (per_minute * 0.8)
    rng = random.Random(address)
    next_at = time.perf_counter() + rng.uniform(0, interval)
    for n in itertools.count():
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if time.perf_counter() >= end:
            return
        next_at += interval
        label = rng.choice(["ai", "real"])
        ids = run.prediction_ids[address]
        if n % 3 != 2 and ids:  # mostly about an earlier prediction, sometimes an upload
            data: dict[str, str] = {"label": label, "prediction_id": rng.choice(ids)}
            files = None
        else:
            data = {"label": label, "note": "soak"}
            files = {"file": ("fb.jpg", rng.choice(images), "image/jpeg")}
        response = await _timed(
            run, started, "feedback", lambda d=data, f=files: client.post("/v1/feedback", data=d, files=f)
        )
        if response is not None and response.status_code in (201, 202):
            run.feedback_ids.append(response.json()["id"])


def _window(samples: list[Sample]) -> dict[str, Any]:
    ok = sorted(s.latency for s in samples if 200 <= s.status < 300)
    errors = Counter(str(s.status) for s in samples if not 200 <= s.status < 300)
    by_kind = {}
    for kind in ("predict", "batch", "feedback"):
        lat = sorted(s.latency for s in samples if s.kind == kind and 200 <= s.status < 300)
        if lat:
            by_kind[kind] = {
                "n": len(lat),
                "p50_ms": round(percentile(lat, 50) * 1000, 1),
                "p99_ms": round(percentile(lat, 99) * 1000, 1),
            }
    return {
        "requests": len(samples),
        "errors": dict(errors),
        "p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
        "p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
        "by_kind": by_kind,
    }


def _slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB), in MB a minute."""
    if len(points) < 2:
        return None
    xs = [p[0] / 60 for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 3) if den else None


async def _drive(server: Server, args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    run = Run()
    seconds = args.minutes * 60
    clients = {address: _client(server.url, address, args.concurrency) for address in CLIENTS}
    rss: list[tuple[float, float]] = [(0.0, server.rss_mb())]
    windows: list[dict[str, Any]] = []
    started = time.perf_counter()
    end = started + seconds
    tasks = [
        asyncio.create_task(
            _predictor(run, clients[CLIENTS[i % 2]], CLIENTS[i % 2], images, end, started, args.batch_size)
        )
        for i in range(args.concurrency)
    ]
    tasks += [
        asyncio.create_task(_feedback(run, clients[a], a, images, end, started, args.feedback_per_minute))
        for a in CLIENTS
    ]
    seen = 0
    try:
        while time.perf_counter() < end:
            await asyncio.sleep(min(args.sample_seconds, max(0.0, end - time.perf_counter())))
            now = time.perf_counter() - started
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with {server.process.returncode}")
            rss.append((now, server.rss_mb()))
            window = run.samples[seen:]
            seen += len(window)
            windows.append({"t_s": round(now, 1), "rss_mb": round(rss[-1][1], 1), **_window(window)})
            print(json.dumps(windows[-1]), file=sys.stderr, flush=True)
        await asyncio.gather(*tasks)  # the requests in flight at the end
    finally:
        for task in tasks:
            task.cancel()
        for client in clients.values():
            await client.aclose()
    elapsed = time.perf_counter() - started
    rss.append((elapsed, server.rss_mb()))

    minute = min(60.0, seconds)
    first = [s for s in run.samples if s.at <= minute]
    last = [s for s in run.samples if s.at > elapsed - minute]
    second_half = [p for p in rss if p[0] >= elapsed / 2]
    total = _window(run.samples)
    return {
        "run": run,
        "elapsed_s": round(elapsed, 1),
        "totals": {
            "requests": len(run.samples),
            "by_kind": dict(Counter(s.kind for s in run.samples)),
            "predictions_ok": run.predictions_ok,
            "batch_item_errors": run.batch_item_errors,
            "feedback_ok": len(run.feedback_ids),
            "throughput_rps": round(len(run.samples) / elapsed, 2),
            "p50_ms": total["p50_ms"],
            "p99_ms": total["p99_ms"],
            "latency_by_kind": total["by_kind"],
        },
        "errors": total["errors"],
        "rss_mb": {
            "start": round(rss[0][1], 1),
            "end": round(rss[-1][1], 1),
            "max": round(max(p[1] for p in rss), 1),
            "slope_mb_per_min_second_half": _slope_mb_per_min(second_half),
        },
        "windows": windows,
        "window_summary": {
            "p50_ms_median": _median([w["p50_ms"] for w in windows]),
            "p99_ms_median": _median([w["p99_ms"] for w in windows]),
            "p99_ms_max": max((w["p99_ms"] for w in windows if w["p99_ms"] is not None), default=None),
            "requests_per_window_min": min((w["requests"] for w in windows), default=0),
            "requests_per_window_max": max((w["requests"] for w in windows), default=0),
        },
        "baseline": {
            "note": "the first minute against the last (the same minute when --minutes 1)",
            "first_minute": {**_window(first), "rps": round(len(first) / minute, 2)},
            "last_minute": {**_window(last), "rps": round(len(last) / minute, 2)},
        },
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def _store_counts(store_root: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    logs = sorted((store_root / "predictions").rglob("*.parquet"))
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in logs)
    feedback = list((store_root / "feedback").rglob("*.json"))
    return {"prediction_log_files": len(logs), "prediction_log_rows": rows, "feedback_records": len(feedback)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--architecture", default="tiny")
    parser.add_argument("--concurrency", type=int, default=4, help="prediction clients (half on each address)")
    parser.add_argument("--batch-size", type=int, default=4, help="images in each /v1/predict/batch request")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--feedback-per-minute", type=float, default=30.0, help="the server's per-client limit")
    parser.add_argument("--feedback-burst", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store and the server log here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aidetect-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, store_root = workdir / "model", workdir / "store"
    print(f"exporting {args.architecture} into {model_dir} ...", file=sys.stderr, flush=True)
    size = export_model(args.architecture, model_dir)
    version = register(store_root, model_dir, size)
    images = [test_image(size, seed) for seed in range(8)] + [test_image(size * 2, 100)]
    env = {
        "AIDETECT_HOME": str(workdir / "home"),
        "AIDETECT_STORE_URL": str(store_root),
        "AIDETECT_FEEDBACK_PER_MINUTE": str(args.feedback_per_minute),
        "AIDETECT_FEEDBACK_BURST": str(args.feedback_burst),
        "AIDETECT_LOG_FLUSH_SECONDS": "5",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    server = start_server("serving.app:create_app", env, workdir / "server.log")
    try:
        result = asyncio.run(_drive(server, args, images))
    finally:
        server.stop()  # a clean shutdown flushes the prediction log
    run: Run = result.pop("run")
    counts = _store_counts(store_root)
    report = {
        "architecture": args.architecture,
        "model_version": version,
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "feedback_limit": {"per_minute": args.feedback_per_minute, "burst": args.feedback_burst},
        **result,
        "store": {
            **counts,
            "prediction_rows_missing": run.predictions_ok - counts["prediction_log_rows"],
            "feedback_missing": len(run.feedback_ids) - counts["feedback_records"],
        },
        "server_exit_code": server.process.returncode,
        "workdir": str(workdir),
    }
    print(json.dumps(report, indent=2))
    if os.environ.get("AIDETECT_SOAK_STRICT") and (report["errors"] or report["store"]["prediction_rows_missing"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
