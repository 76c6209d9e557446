"""What the crash-safe prediction journal costs: /v1/predict latency with it and without it.

Two servers (uvicorn + serving.app, prediction log on), one with ``AIDETECT_LOG_JOURNAL`` true
(group commit every ``--commit-ms``) and one with it false, are up at the same time; short load
bursts (``--concurrency`` clients for ``--seconds``) alternate between them, ``--rounds`` pairs,
so both see the same shared, noisy machine. Reported: pooled p50/p99 per server, and the median
over pairs of each ratio (journal / none). The model is the hand-built mean-brightness graph
with a 768-wide embedding: inference costs almost nothing, so the journal's share of a request
is as large as it can get (a real model's tens of ms dilute it). Also, in this process: what
``append`` costs the request path, and the writer thread's time per record (encode, write,
fdatasync), off the request path but on the same cores. Prints one JSON object.

    .venv/bin/python bench/predlog_journal.py [--rounds 8] [--seconds 2] [--concurrency 8] [--commit-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._serving import Server, load, percentile, start_server  # noqa: E402
from tests.helpers import image_bytes  # noqa: E402
from tests.serving.onnx_models import mean_brightness_model  # noqa: E402
from tests.serving.test_hardening import register_onnx  # noqa: E402

EMBEDDING_DIM = 768  # as wide as the real models': the journal writes each record's embedding


def _store(folder: Path) -> Path:
    from model.registry import Registry
    from storage import LocalStore

    store = LocalStore(folder / "store")
    registry = Registry(store)
    model = mean_brightness_model(folder / "mean768.onnx", embedding_dim=EMBEDDING_DIM)
    registry.promote(register_onnx(registry, model), reason="benchmark")
    return store.root


def _server(store: Path, home: Path, journal: bool, commit_ms: float) -> Server:
    env = {
        "AIDETECT_HOME": str(home),
        "AIDETECT_STORE_URL": str(store),
        "AIDETECT_LOG_JOURNAL": str(journal).lower(),
        "AIDETECT_LOG_JOURNAL_COMMIT_MS": str(commit_ms),
        "AIDETECT_ORT_SHARED_POOL": "true",
    }
    home.mkdir(parents=True)
    return start_server("serving.app:create_app", env, home / "server.log")


def _in_process(folder: Path, commit_ms: float, records: int = 2000) -> dict[str, float]:
    """The journal alone: request-path ``append`` and the writer's commit, per record."""
    from datetime import UTC, datetime

    from serving.journal import Journal
    from storage.predictions import PredictionRecord

    journal = Journal(folder, commit_ms / 1000)
    rng = np.random.default_rng(0)
    batch = [
        PredictionRecord(
            id=f"{i:016x}",
            created_at=datetime.now(UTC),
            model_version="v",
            probability=0.5,
            raw_score=0.0,
            label="ai",
            latency_ms=3.0,
            bytes=12345,
            image_sha256="0" * 64,
            embedding=rng.standard_normal(EMBEDDING_DIM).astype(np.float16).tolist(),
        )
        for i in range(records)
    ]
    per_commit = 20  # as many as arrive in a 50 ms interval at 400 predictions/s
    appending = committing = 0.0
    for start in range(0, records, per_commit):
        t0 = time.perf_counter()
        for record in batch[start : start + per_commit]:
            journal.append(record)
        t1 = time.perf_counter()
        journal.commit()
        appending += t1 - t0
        committing += time.perf_counter() - t1
    journal.close()
    return {
        "append_us_per_record": round(appending / records * 1e6, 2),
        "commit_us_per_record": round(committing / records * 1e6, 1),
        "commit_ms_per_20_records": round(committing / (records / per_commit) * 1000, 2),
        "journal_bytes_per_record": round(sum(p.stat().st_size for p in folder.glob("*.jsonl")) / records),
    }


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--commit-ms", type=float, default=50.0)
    args = parser.parse_args()
    started = time.monotonic()
    latencies: dict[bool, list[float]] = {True: [], False: []}
    served: dict[bool, list[float]] = {True: [], False: []}  # requests per second, per burst
    ratios: dict[str, list[float]] = {"p50": [], "p99": [], "throughput": []}
    image = image_bytes(size=(256, 256), fmt="JPEG", seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = _store(folder)
        servers = {
            journal: _server(store, folder / f"home-{journal}", journal, args.commit_ms) for journal in (True, False)
        }
        try:
            for server in servers.values():
                asyncio.run(load(server.url + "/v1/predict", image, args.concurrency, seconds=1.0))  # warm-up
            for r in range(args.rounds):
                burst: dict[bool, dict[str, float]] = {}
                for journal in (True, False) if r % 2 == 0 else (False, True):  # neither always goes first
                    result = asyncio.run(
                        load(servers[journal].url + "/v1/predict", image, args.concurrency, seconds=args.seconds)
                    )
                    latencies[journal] += result.latencies
                    burst[journal] = result.summary()
                    served[journal].append(burst[journal]["throughput_rps"])
                for key in ("p50", "p99"):
                    ratios[key].append(burst[True][f"{key}_ms"] / burst[False][f"{key}_ms"])
                ratios["throughput"].append(burst[True]["throughput_rps"] / burst[False]["throughput_rps"])
            metrics = httpx.get(servers[True].url + "/metrics", timeout=10).text
            write_errors = _metric(metrics, "aidetect_prediction_log_journal_write_errors_total")
        finally:
            for server in servers.values():
                server.stop()
        alone = _in_process(folder / "journal-alone", args.commit_ms)

    def pooled(journal: bool) -> dict[str, float]:
        ordered = sorted(latencies[journal])
        return {
            "requests": len(ordered),
            "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "throughput_rps_median": round(statistics.median(served[journal]), 1),
        }

    print(
        json.dumps(
            {
                "benchmark": "predlog_journal",
                "commit_ms": args.commit_ms,
                "concurrency": args.concurrency,
                "burst_seconds": args.seconds,
                "rounds": args.rounds,
                "embedding_dim": EMBEDDING_DIM,
                "journal": pooled(True) | {"journal_write_errors": write_errors},
                "none": pooled(False),
                "ratio_journal_over_none": {
                    f"{key}_median": round(statistics.median(values), 3) for key, values in ratios.items()
                }
                | {f"{key}_per_round": [round(v, 3) for v in values] for key, values in ratios.items()},
                "journal_alone": alone,
                "wall_s": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
