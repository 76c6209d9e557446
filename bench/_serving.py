"""Shared parts of the serving benchmarks: a model to serve, a server process, a load generator.

The model is built and exported in a child process (TensorFlow), never in the benchmark's own
process: onnxruntime in a process that imported TensorFlow runs several times slower.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_EXPORT = r"""
import io, json, os, sys
from pathlib import Path
import numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from model.architectures import build_model
from model.config import get_config
from model.export import export_onnx, make_canaries
architecture, out = sys.argv[1], Path(sys.argv[2])
config = get_config(architecture)
model = build_model(config)
model.save(out / "model.keras")
export_onnx(model, out / "model.onnx", input_fit=config.input_fit)
rng = np.random.default_rng(0)
canaries = make_canaries(model, rng.integers(0, 256, (4, config.image_size, config.image_size, 3), dtype=np.uint8))
np.savez_compressed(out / "canaries.npz", **canaries)
print(json.dumps({"image_size": config.image_size}))
"""


def export_model(architecture: str, out: Path) -> int:
    """Build and export ``architecture`` (random init: speed does not depend on weights); returns its input size."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT, architecture, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"export failed:\n{result.stderr[-3000:]}")
    return int(json.loads(result.stdout.strip().splitlines()[-1])["image_size"])


def register(store_root: Path, model_dir: Path, size: int, promote: bool = True) -> str:
    """Register the exported files as a new version in a local store (and promote it)."""
    from model.card import ModelCard
    from model.registry import Registry
    from storage import LocalStore

    registry = Registry(LocalStore(store_root))
    version = registry.register(
        {"model.onnx": model_dir / "model.onnx", "canaries.npz": (model_dir / "canaries.npz").read_bytes()},
        ModelCard(input_size=size, config={"name": "bench"}),
    )
    if promote:
        registry.promote(version, reason="benchmark")
    return version


def test_image(size: int, seed: int = 0) -> bytes:
    """A JPEG of the model's input size (photographic noise: decode cost like a real upload)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(app: str, env: dict[str, str], log: Path, ready_path: str = "/readyz", timeout: float = 120) -> Server:
    """``uvicorn <app>`` on a free loopback port (one worker, no access log), waits until ready."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{app} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return Server(process, url, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{app} not ready within {timeout} s: {log.read_text()[-2000:]}")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    versions: list[tuple[float, str]] = field(default_factory=list)  # (time answered, model version)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "requests": len(ordered),
            "errors": self.errors,
            "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "throughput_rps": round(len(ordered) / self.elapsed, 1) if self.elapsed else 0.0,
        }


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def load(
    url: str,
    image: bytes,
    concurrency: int,
    *,
    requests: int | None = None,
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    field_name: str = "file",
) -> LoadResult:
    """``concurrency`` clients posting ``image`` back to back until ``requests``, ``seconds`` or ``stop``."""
    result = LoadResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    counter = iter(range(requests if requests is not None else 1 << 62))
    started = time.perf_counter()
    end = started + seconds if seconds is not None else float("inf")

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            while time.perf_counter() < end and not (stop is not None and stop.is_set()):
                if next(counter, None) is None:
                    return
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, files={field_name: ("x.jpg", image, "image/jpeg")})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                t1 = time.perf_counter()
                if ok:
                    result.latencies.append(t1 - t0)
                    version = response.json().get("model_version")
                    if version:
                        result.versions.append((t1, version))
                else:
                    result.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
