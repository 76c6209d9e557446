"""A rolling deploy on a real Docker engine, measured: docker-compose.yml's serving behind its
proxy, under load, while ``deploy/rollout.py`` replaces the replicas. Prints JSON.

Needs a Docker engine and Compose v2. Runs as its own Compose project (``--project``) with a
generated env file (every CHANGE_ME replaced, free host ports), so a stack already running
on the host is not touched, and takes it down (volumes included) at the end:

1. builds the serving image twice, tags ``rollout-a`` and ``rollout-b`` (only AIDETECT_BUILD
   differs: the second build reuses every other layer), and records the image sizes;
2. starts ``minio`` + ``minio-init``, then registers and promotes the tiny architecture
   (random init, exported to ONNX) in the bucket through MinIO's published port;
3. starts ``--replicas`` serving replicas on ``rollout-a`` and the proxy;
4. with ``--clients`` clients predicting through the proxy: rolls out ``rollout-b``
   (every replica replaced), then a bad configuration (AIDETECT_ADMIN_TOKEN=CHANGE_ME, which
   serving refuses to start on), which must fail with the b replicas still serving;
5. reports requests, failures by kind, latency before / during / after, seconds per rollout,
   the build each replica reports, and the image sizes.

    .venv/bin/python bench/compose_rollout.py                       # 2 replicas, 3 clients
    .venv/bin/python bench/compose_rollout.py -f my.override.yml    # extra compose files

``-f`` adds compose files after docker-compose.yml, e.g. to swap images a host cannot pull.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._serving import export_model, free_port, percentile, test_image  # noqa: E402
from deploy.rollout import ComposeRuntime, RolloutError, rollout  # noqa: E402
from storage import configured_store  # noqa: E402
from tests.load import ClientThreads  # noqa: E402


def env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = secrets.token_urlsafe(18) if value.strip() == "CHANGE_ME" else value.strip()
    for key in ("SERVING_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT", "PREFECT_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT"):
        env[key] = str(free_port())
    env["AIDETECT_PROXY_PREDICT_PER_10S"] = "1000000"  # every client here is one address: no per-client limit
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


class Load(ClientThreads):
    """Clients predicting through the proxy; every answer timed and classified."""

    def __init__(self, url: str, clients: int, images: list[bytes]) -> None:
        self.url, self.images = url, images
        self.samples: list[tuple[float, str, float]] = []  # (when, outcome, seconds)
        super().__init__(*(functools.partial(self._run, n) for n in range(clients)))

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = n
            while not self.done.is_set():
                image = self.images[i % len(self.images)]
                i += 1
                started = time.perf_counter()
                try:
                    status = client.post("/v1/predict", files={"file": ("x.jpg", image, "image/jpeg")}).status_code
                    outcome = str(status)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with self.lock:
                    self.samples.append((time.monotonic(), outcome, time.perf_counter() - started))

    def window(self, start: float, end: float) -> dict[str, Any]:
        with self.lock:
            chosen = [s for s in self.samples if start <= s[0] < end]
        ok = sorted(s[2] for s in chosen if s[1] == "200")
        return {
            "requests": len(chosen),
            "outcomes": dict(Counter(s[1] for s in chosen)),
            "per_second": round(len(chosen) / (end - start), 1) if end != float("inf") else None,
            "p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
            "p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
            "max_ms": round(ok[-1] * 1000, 1) if ok else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of load before and after each rollout")
    parser.add_argument("--project", default="aidetect-rollout-bench")
    parser.add_argument("-f", "--file", action="append", default=[], help="extra compose file (after ours)")
    parser.add_argument("--keep", action="store_true", help="leave the project running")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="compose-rollout-"))
    env = env_file(work / ".env")
    compose = ["docker", "compose", "--project-directory", str(ROOT), "--env-file", str(work / ".env")]
    compose += ["--project-name", args.project, "--file", str(ROOT / "docker-compose.yml")]
    compose += [arg for path in args.file for arg in ("--file", str(Path(path).resolve()))]

    def run(*cmd: str, tag: str = "rollout-a", extra: dict[str, str] | None = None, check: bool = True) -> str:
        environment = {**os.environ, "AIDETECT_IMAGE_TAG": tag, **(extra or {})}
        result = subprocess.run([*compose, *cmd], env=environment, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    out: dict[str, Any] = {"replicas": args.replicas, "clients": args.clients}
    try:
        # 1. the images
        build_seconds = {}
        for tag in ("rollout-a", "rollout-b"):
            started = time.monotonic()
            run("build", "serving", tag=tag)
            build_seconds[tag] = round(time.monotonic() - started, 1)
        images = env["AIDETECT_IMAGES"]
        sizes = {}
        for tag in ("rollout-a", "rollout-b"):
            inspect = subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Size}}", f"{images}/serving:{tag}"],
                capture_output=True,
                text=True,
                check=True,
            )
            sizes[tag] = int(inspect.stdout.strip())
        out["serving_image"] = {"bytes": sizes, "mb": {k: round(v / 1e6) for k, v in sizes.items()}}
        out["build_seconds"] = build_seconds

        # 2. the store and a promoted model
        run("up", "--detach", "--wait", "minio")
        run("up", "--no-deps", "minio-init")
        os.environ.update(
            {
                "AIDETECT_STORE_URL": f"s3://{env['AIDETECT_BUCKET']}/{env['AIDETECT_STORE_PREFIX']}",
                "AIDETECT_S3_ENDPOINT_URL": f"http://127.0.0.1:{env['MINIO_PORT']}",
                "AWS_ACCESS_KEY_ID": env["AIDETECT_S3_ACCESS_KEY"],
                "AWS_SECRET_ACCESS_KEY": env["AIDETECT_S3_SECRET_KEY"],
            }
        )
        from aidetect.settings import Settings
        from model.card import ModelCard
        from model.registry import Registry

        model_dir = work / "model"
        size = export_model("tiny", model_dir)
        registry = Registry(configured_store(Settings()))
        canaries = io.BytesIO((model_dir / "canaries.npz").read_bytes())
        version = registry.register(
            {"model.onnx": model_dir / "model.onnx", "canaries.npz": canaries.getvalue()},
            ModelCard(input_size=size, config={"name": "bench"}),
        )
        registry.promote(version, reason="benchmark")

        # 3. serving on a, behind the proxy
        run("up", "--detach", "--no-deps", "--wait", "--scale", f"serving={args.replicas}", "serving", "proxy")
        base = f"http://127.0.0.1:{env['SERVING_PORT']}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise SystemExit("serving did not get ready behind the proxy:\n" + run("logs", "--tail", "50"))

        # 4. the rollouts, under load
        runtime_args = compose[2:]
        images_bytes = [test_image(64, seed) for seed in range(16)]
        lines: list[str] = []

        def progress(line: str) -> None:
            lines.append(f"{time.strftime('%H:%M:%S')} {line}")
            print(line, file=sys.stderr, flush=True)

        with Load(base, args.clients, images_bytes) as load:
            t0 = time.monotonic()
            time.sleep(args.settle)
            t1 = time.monotonic()
            os.environ["AIDETECT_IMAGE_TAG"] = "rollout-b"
            report = rollout(ComposeRuntime("serving", compose_args=runtime_args), timeout=180, progress=progress)
            t2 = time.monotonic()
            time.sleep(args.settle)
            t3 = time.monotonic()
            os.environ["AIDETECT_ADMIN_TOKEN"] = "CHANGE_ME"  # a bad release: serving refuses to start
            try:
                rollout(ComposeRuntime("serving", compose_args=runtime_args), timeout=180, progress=progress)
                bad = "the rollout of a bad configuration did not fail"
            except RolloutError as exc:
                bad = str(exc).split(". Its last log lines")[0]
            finally:
                del os.environ["AIDETECT_ADMIN_TOKEN"]
            t4 = time.monotonic()
            time.sleep(args.settle)
            t5 = time.monotonic()

        builds: Counter[str] = Counter()
        for _ in range(40):
            builds[httpx.get(f"{base}/healthz", timeout=5).json()["build"]] += 1
        out.update(
            {
                "windows": {
                    "before": load.window(t0, t1),
                    "rollout_good": load.window(t1, t2),
                    "between": load.window(t2, t3),
                    "rollout_bad": load.window(t3, t4),
                    "after": load.window(t4, t5),
                },
                "total": load.window(0, float("inf")),
                "rollout_seconds": round(report.seconds, 1),
                "replaced": report.as_dict()["replaced"],
                "bad_rollout": bad,
                "builds_answering_after": dict(builds),
                "running_after": [r.name for r in ComposeRuntime("serving", compose_args=runtime_args).replicas()],
                "progress": lines,
            }
        )
        failures = {k: v for k, v in out["total"]["outcomes"].items() if k != "200"}
        out["failed_requests"] = sum(failures.values())
    finally:
        if not args.keep:
            run("down", "--volumes", "--remove-orphans", check=False)
    print(json.dumps(out, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


if __name__ == "__main__":
    main()
