"""Hot swap under continuous load: failed requests, p99 during swaps, time to serve, memory growth.

Exports one model (random init, in a TensorFlow child process; ``--model`` reuses an export),
registers it ``--swaps`` times in a fresh local store (each version's ONNX file made distinct by
one metadata entry, the same graph, so each promotion is a real swap of a file never seen
before: download, sha256, pre-optimised copy, new session, warm-up, canaries; ``--same-file``
registers the identical file, as a replica restarting on a cached copy sees it) before
anything is measured, since registering is the training worker's job, and serves it with
uvicorn (one worker). ``--app`` serves a variant: ``bench._swap_variants:in_process_app`` (the
session optimised in process on the inference thread, the behaviour before the pre-optimised
copy) or ``bench._swap_variants:sleep_app`` (a swap that only sleeps: the noise floor of the
ratio on this machine). Swap 1 sets
the memory baseline. Phase 1 measures steady load with no promotions. Phase 2 keeps the same
load running while it promotes ``--timed-swaps`` versions one after another, waiting after each
until the new version answers /v1/predict, then pausing ``--pause`` s; p99 in the swap windows
is compared with p99 of the requests between them (the machine is shared: its speed drifts
between phases by up to 40% here, so phase 1 is reported but not the reference). Phase 3 promotes the
rest. Resident memory is always read in the same state: after a burst of requests and two
alias polls (when the old session has been released). The prediction log is off, so disk
writes do not add noise. Prints one JSON object.

    .venv/bin/python bench/swap_under_load.py [--architecture effnet-b0] [--swaps 50] [--timed-swaps 20]
        [--concurrency 8] [--steady-seconds 15] [--poll 0.5] [--pause 3.0] [--app MODULE:FACTORY]
        [--model EXPORT_DIR] [--same-file]

Targets (acceptance): 0 failed requests; p99 during swaps at most 1.5x steady p99; resident
memory after ``--swaps`` swaps at most 10% above that after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _serving import LoadResult, Server, export_model, load, percentile, register, start_server, test_image

P99_RATIO_TARGET = 1.5
RSS_GROWTH_TARGET_PCT = 10.0
WINDOW_TAIL_S = 0.5  # a swap window runs from the promotion to the first new answer plus this


def register_versions(store: Path, model_dir: Path, size: int, count: int, scratch: Path, same_file: bool) -> list[str]:
    """Register the export ``count`` times; unless ``same_file``, each ONNX file differs by one metadata entry."""
    if same_file:
        return [register(store, model_dir, size, False) for _ in range(count)]
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"))
    entry = graph.metadata_props.add()
    entry.key = "bench.copy"
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / "canaries.npz", scratch / "canaries.npz")
    versions = []
    for i in range(count):
        entry.value = str(i)
        onnx.save(graph, str(scratch / "model.onnx"))
        versions.append(register(store, scratch, size, False))
    return versions


def input_size(onnx_file: Path) -> int:
    """The side of the square input the exported graph takes."""
    import onnx

    return int(onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim[1].dim_value)


def progress(message: str) -> None:
    print(f"[swap_under_load] {message}", file=sys.stderr, flush=True)


@dataclass
class Swap:
    version: str
    promoted_at: float  # perf_counter just before the alias was written
    seen_at: float | None  # when GET /v1/model first named the version (None: refused or timed out)
    answered_at: float | None = None  # first /v1/predict answer from the version (timed swaps)

    @property
    def seconds(self) -> float | None:
        end = self.answered_at if self.answered_at is not None else self.seen_at
        return None if end is None else end - self.promoted_at


async def promote_and_wait(client: httpx.AsyncClient, url: str, store: Path, version: str, timeout: float) -> Swap:
    """Promote an already registered version, wait until the server reports it live."""
    from model.registry import Registry
    from storage import LocalStore

    promoted_at = time.perf_counter()
    await asyncio.to_thread(Registry(LocalStore(store)).promote, version, reason="benchmark")
    before = (await client.get(url + "/v1/model")).json()
    deadline = promoted_at + timeout
    while time.perf_counter() < deadline:
        info = (await client.get(url + "/v1/model")).json()
        if info["version"] == version:
            return Swap(version, promoted_at, time.perf_counter())
        if info["refused"] > before["refused"]:
            progress(f"version {version} refused: {info['last_error']}")
            break
        await asyncio.sleep(0.1)
    return Swap(version, promoted_at, None)


def first_answers(result: LoadResult, swaps: list[Swap]) -> None:
    """Fill in when each swapped-in version first answered /v1/predict."""
    first: dict[str, float] = {}
    for answered, version in result.versions:
        first.setdefault(version, answered)
    for swap in swaps:
        swap.answered_at = first.get(swap.version)


def split_by_windows(
    result: LoadResult, swaps: list[Swap], by_start: bool = False
) -> tuple[list[float], list[float]] | None:
    """Latencies of requests overlapping a swap window (promotion to first new answer + tail), and of the
    rest of the same phase: the steady requests interleaved with the swaps, so that the machine's
    drifting speed (shared and noisy) affects both alike.

    Overlap is length-biased: a slow request overlaps a window more often than a fast one, so the
    overlapping set has a longer tail even when a swap costs nothing (``sleep_app`` measures how much).
    ``by_start`` classifies each request by when it was sent instead, which has no such bias."""
    if len(result.versions) != len(result.latencies):  # every answer names its version; if not, skip
        return None
    windows = [
        (s.promoted_at, (s.answered_at or s.seen_at or s.promoted_at) + WINDOW_TAIL_S) for s in swaps if s.seen_at
    ]
    inside, outside = [], []
    for latency, (answered, _) in zip(result.latencies, result.versions, strict=True):
        sent = answered - latency
        if by_start:
            hit = any(start <= sent <= end for start, end in windows)
        else:
            hit = any(sent <= end and answered >= start for start, end in windows)
        (inside if hit else outside).append(latency)
    return sorted(inside), sorted(outside)


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def seconds_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


async def bench(args: argparse.Namespace, server: Server, store: Path, model_dir: Path, size: int, tmp: Path) -> dict:
    image = test_image(size)
    predict = server.url + "/v1/predict"
    swaps_total = max(args.swaps, args.timed_swaps + 1)
    # Registration is the training worker's job (another machine): done before any measurement.
    progress(f"registering {swaps_total} versions ({'the same file' if args.same_file else 'distinct files'})")
    versions = iter(register_versions(store, model_dir, size, swaps_total, tmp / "copy", args.same_file))
    rss_trace: list[float] = []

    async def settled_rss() -> float:
        """RSS in one fixed state: after a burst of requests and two polls (the old session released)."""
        burst = await load(predict, image, args.concurrency, requests=args.concurrency * 4)
        await asyncio.sleep(2 * args.poll + 0.5)
        rss_trace.append(server.rss_mb())
        return float(burst.errors)

    async with httpx.AsyncClient(timeout=30) as client:
        progress("warm-up load (2 s, not measured)")
        await load(predict, image, args.concurrency, seconds=2)
        progress("swap 1 (untimed): the memory baseline")
        first = await promote_and_wait(client, server.url, store, next(versions), args.swap_timeout)
        burst_errors = await settled_rss()

        progress(f"phase 1: steady load for {args.steady_seconds} s, no promotions")
        steady = await load(predict, image, args.concurrency, seconds=args.steady_seconds)
        progress(f"steady: {steady.summary()}")

        progress(f"phase 2: {args.timed_swaps} promotions under continuous load")
        stop = asyncio.Event()
        load_task = asyncio.create_task(load(predict, image, args.concurrency, stop=stop))
        timed: list[Swap] = []
        try:
            for i in range(args.timed_swaps):
                swap = await promote_and_wait(client, server.url, store, next(versions), args.swap_timeout)
                timed.append(swap)
                progress(f"swap {i + 2}: {swap.version} live after {swap.seconds and round(swap.seconds, 3)} s")
                await asyncio.sleep(args.pause)
        finally:
            stop.set()
            during = await load_task
        first_answers(during, timed)
        progress(f"during swaps: {during.summary()}")

        progress(f"phase 3: {swaps_total - 1 - args.timed_swaps} more promotions, a burst of requests after each")
        untimed: list[Swap] = [first]
        for i in range(args.timed_swaps + 1, swaps_total):
            swap = await promote_and_wait(client, server.url, store, next(versions), args.swap_timeout)
            untimed.append(swap)
            burst_errors += await settled_rss()
            if (i + 1) % 10 == 0 or i + 1 == swaps_total:
                progress(f"swap {i + 1}: rss {rss_trace[-1]:.1f} MB")
        final = (await client.get(server.url + "/v1/model")).json()

    steady_summary, during_summary = steady.summary(), during.summary()
    split = split_by_windows(during, timed)
    if split is None:
        raise RuntimeError("answers without a model version: cannot split by swap windows")
    inside, outside = split
    windows, between = _summary(inside), _summary(outside)
    p99_ratio = windows["p99_ms"] / between["p99_ms"]
    sent_in, sent_out = split_by_windows(during, timed, by_start=True) or ([], [])
    sent_windows, sent_between = _summary(sent_in), _summary(sent_out)
    phase_ratio = during_summary["p99_ms"] / steady_summary["p99_ms"]
    timed_seconds = [s.seconds for s in timed if s.seconds is not None]
    all_swaps = timed + untimed
    not_served = sum(1 for s in all_swaps if s.seen_at is None)
    rss_1, rss_n = rss_trace[0], rss_trace[-1]
    growth = (rss_n - rss_1) / rss_1 * 100
    failed = during.errors + int(burst_errors)
    return {
        "steady": steady_summary,
        "during_swaps": during_summary,
        "swap_windows": {
            "definition": f"requests in flight between a promotion and its first new answer + {WINDOW_TAIL_S} s",
            **windows,
        },
        "between_swaps": {"definition": "the other requests of phase 2, interleaved with the swaps", **between},
        "p99_ratio": round(p99_ratio, 3),
        "p99_ratio_definition": "swap windows p99 / between-swaps p99 (same phase, interleaved)",
        "sent_in_windows": {"definition": "requests sent inside a swap window (no length bias)", **sent_windows},
        "sent_between_swaps": {"definition": "the other requests of phase 2, by when they were sent", **sent_between},
        "p99_ratio_by_send_time": round(sent_windows["p99_ms"] / sent_between["p99_ms"], 3),
        "phase_p99_ratio": round(phase_ratio, 3),
        "phase_p99_ratio_definition": "all of phase 2 / phase 1 (sequential: includes the machine's drift)",
        "swaps_timed": len(timed),
        "swaps_total": len(all_swaps),
        "swaps_not_served": not_served,
        "swap_seconds": {
            "definition": "promotion (alias written) to the first /v1/predict answer from the new version",
            **seconds_summary(timed_seconds),
            "all": [round(s, 3) for s in timed_seconds],
        },
        "swap_seconds_untimed": {
            "definition": "promotion to GET /v1/model naming the new version, no load",
            **seconds_summary([s.seconds for s in untimed if s.seconds is not None]),
        },
        "failed_requests": {"during_swaps": during.errors, "bursts_after_untimed_swaps": int(burst_errors)},
        "server": {"swaps": final["swaps"], "refused": final["refused"], "last_error": final["last_error"]},
        "rss_mb": {
            "definition": "server VmRSS after a swap, a burst of 4 x concurrency requests and two alias polls",
            "after_1": round(rss_1, 1),
            "after_N": round(rss_n, 1),
            "N": len(all_swaps),
            "trace": [round(r, 1) for r in rss_trace],
        },
        "rss_growth_pct": round(growth, 2),
        "targets": {
            "failed_requests": {"value": failed, "target": 0, "pass": failed == 0 and not_served == 0},
            "p99_ratio": {"value": round(p99_ratio, 3), "target": P99_RATIO_TARGET, "pass": p99_ratio <= 1.5},
            "rss_growth_pct": {
                "value": round(growth, 2),
                "target": RSS_GROWTH_TARGET_PCT,
                "pass": growth <= RSS_GROWTH_TARGET_PCT,
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="effnet-b0")
    parser.add_argument("--swaps", type=int, default=50, help="promotions in all (RSS is read after the last)")
    parser.add_argument("--timed-swaps", type=int, default=20, help="the first N promotions, under measured load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--steady-seconds", type=float, default=15)
    parser.add_argument("--poll", type=float, default=0.5, help="AIDETECT_ALIAS_POLL_SECONDS")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between a swap answering and the next")
    parser.add_argument("--app", default="serving.app:create_app", help="the app factory to serve (variants)")
    parser.add_argument("--swap-timeout", type=float, default=120, help="give up on a swap after this many s")
    parser.add_argument("--model", type=Path, help="an export to reuse (model.onnx, canaries.npz) instead of exporting")
    parser.add_argument("--same-file", action="store_true", help="register the identical file every time")
    args = parser.parse_args()
    if args.timed_swaps < 1:
        parser.error("--timed-swaps must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="swap_under_load-"))
    server: Server | None = None
    try:
        export = args.model or tmp / "export"
        if args.model is None:
            progress(f"exporting {args.architecture}")
            started = time.perf_counter()
            export_model(args.architecture, export)
            progress(f"exported in {time.perf_counter() - started:.1f} s")
        size = input_size(export / "model.onnx")
        store = tmp / "store"
        register(store, export, size, promote=True)
        env = {
            "AIDETECT_HOME": str(tmp / "home"),
            "AIDETECT_STORE_URL": str(store),
            "AIDETECT_ALIAS_POLL_SECONDS": str(args.poll),
            "AIDETECT_PREDICTION_LOG": "false",
        }
        log = tmp / "server.log"
        server = start_server(args.app, env, log)
        results = asyncio.run(bench(args, server, store, export, size, tmp))
        server.stop()
        log_text = log.read_text(errors="replace")
        server = None
        print(
            json.dumps(
                {
                    "benchmark": "swap_under_load",
                    "architecture": args.architecture,
                    "app": args.app,
                    "files": "the same file" if args.same_file else "distinct files (one metadata entry apart)",
                    "image_size": size,
                    "cpu_count": os.cpu_count(),
                    "concurrency": args.concurrency,
                    "poll_seconds": args.poll,
                    "pause_seconds": args.pause,
                    "steady_seconds": args.steady_seconds,
                    "prediction_log": False,
                    "note": "prediction log off (no disk writes); load generator shares the machine with the server",
                    **results,
                    "server_log_problem_lines": sum(
                        1 for line in log_text.splitlines() if "ERROR" in line or "Traceback" in line
                    ),
                },
                indent=2,
            )
        )
    finally:
        if server is not None:
            server.stop()
            progress(f"server log tail:\n{(tmp / 'server.log').read_text(errors='replace')[-2000:]}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
