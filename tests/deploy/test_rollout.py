"""A rolling deploy of serving under load, without Docker: no failed request, nothing lost.

What compose runs, from compose's own settings: HAProxy (the ``proxy`` service) with
deploy/haproxy.cfg and the proxy's compose environment, and serving replicas with the
serving image's CMD and the serving service's compose environment (AIDETECT_DRAIN_SECONDS
included), against an S3 server (moto) holding a promoted model. What Docker does is
played by ``Containers``: each replica gets its own loopback address (127.0.0.N, like a
container's address), and a small DNS server answers the service name with the running
replicas' addresses, registered when a replica starts and removed when its process has
exited, as Docker's embedded DNS does. ``rollout`` in ``deploy/rollout.py`` then replaces the
replicas one at a time while clients keep predicting and reporting through the proxy.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.rollout import Replica, RolloutError, rollout
from storage import ObjectStore, configured_store
from tests.deploy.test_services import (
    Localizer,
    base_env,
    dockerfile,
    image_cmd,
    load_compose,
    make_dotenv,
    ports_of,
    service_env,
    tail,
)
from tests.helpers import free_port, image_bytes, needs_haproxy
from tests.load import ClientThreads

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


# --- Docker's embedded DNS -----------------------------------------------------------------------


class DNS:
    """A records for names, over UDP on 127.0.0.1 (what 127.0.0.11 answers in a container)."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.queries = 0
        dns = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = dns.answer(data)
                if reply:
                    sock.sendto(reply, self.client_address)

        self.server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DNS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, name: str, address: str) -> None:
        with self.lock:
            self.records.setdefault(name, []).append(address)

    def remove(self, name: str, address: str) -> None:
        with self.lock:
            self.records[name].remove(address)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack(">HHH", query[:6])
        if qdcount != 1:
            return None
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace").lower())
            offset += 1 + length
        question_end = offset + 5
        qtype, _qclass = struct.unpack(">HH", query[offset + 1 : question_end])
        name = ".".join(labels)
        with self.lock:
            self.queries += 1
            known = name in self.records
            addresses = list(self.records.get(name, [])) if qtype == 1 else []
        rcode = 0 if known else 3  # NXDOMAIN for a name no container has
        header = struct.pack(
            ">HHHHHH", ident, 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode, 1, len(addresses), 0, 0
        )
        answers = b"".join(
            struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address) for address in addresses
        )
        return header + query[12:question_end] + answers


# --- what Docker does to serving's containers ---------------------------------------------------


class Containers:
    """Serving replicas as processes, one loopback address each, registered in the DNS."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, dns: DNS, tmp: Path) -> None:
        self.command, self.env, self.port, self.dns, self.tmp = command, env, port, dns, tmp
        self.image, self.image_env = "v1", {"AIDETECT_BUILD": "v1"}
        self.numbers = itertools.count(1)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.addresses: dict[str, str] = {}
        self.images: dict[str, str] = {}
        self.exit_codes: dict[str, int] = {}
        self.stopping: set[str] = set()

    def new_image(self, tag: str, **env: str) -> None:
        """What a new image tag in .env gives the next container (here: its environment)."""
        self.image, self.image_env = tag, {"AIDETECT_BUILD": tag, **env}

    def replicas(self) -> list[Replica]:
        return [
            Replica(name, name, self.images[name])
            for name, process in self.processes.items()
            if process.poll() is None and name not in self.stopping
        ]

    def start_one(self) -> Replica:
        number = next(self.numbers)
        name, address = f"serving-{number}", f"127.0.0.{number + 1}"
        home = self.tmp / name  # each container has its own filesystem
        home.mkdir()
        command = list(self.command)
        command[command.index("--host") + 1] = address
        command[command.index("--port") + 1] = str(self.port)
        # each container has its own hostname, which is its replica id (AIDETECT_REPLICAS_DIR)
        env = {**self.env, **self.image_env, "AIDETECT_HOME": str(home), "AIDETECT_REPLICA_ID": name}
        self.dns.add("serving", address)  # Docker registers the name when the container starts
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(  # noqa: S603
                [str(BIN / command[0]), *command[1:]], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.addresses[name], self.images[name] = address, self.image
        threading.Thread(target=self._deregister_on_exit, args=(name,), daemon=True).start()
        return Replica(name, name, self.image)

    def _deregister_on_exit(self, name: str) -> None:
        self.exit_codes[name] = self.processes[name].wait()
        self.dns.remove("serving", self.addresses[name])  # ... and removes it once it has stopped

    def url(self, replica: Replica | str, path: str) -> str:
        name = replica if isinstance(replica, str) else replica.name
        return f"http://{self.addresses[name]}:{self.port}{path}"

    def health(self, replica: Replica) -> str:
        if self.processes[replica.name].poll() is not None:
            return "exited"
        try:
            return "healthy" if httpx.get(self.url(replica, "/healthz"), timeout=4).status_code == 200 else "starting"
        except httpx.HTTPError:
            return "starting"

    def ready(self, replica: Replica) -> bool:
        try:
            return httpx.get(self.url(replica, "/readyz"), timeout=4).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, replica: Replica, grace: float = 30.0) -> None:
        """``docker stop``: SIGTERM, SIGKILL after the stop grace period (compose's 30 s)."""
        self.stopping.add(replica.name)
        process = self.processes[replica.name]
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        while replica.name not in self.exit_codes:  # the DNS entry goes with the container
            time.sleep(0.01)

    def logs(self, replica: Replica, lines: int = 30) -> str:
        return "\n".join((self.tmp / f"{replica.name}.log").read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for replica in self.replicas():
            self.stop(replica)


# --- clients --------------------------------------------------------------------------------------


class Load(ClientThreads):
    """Clients predicting (single images) and reporting (uploads) through the proxy, nonstop."""

    def __init__(self, base_url: str, images: list[bytes], clients: int = 3) -> None:
        self.base_url, self.images, self.clients = base_url, images, clients
        self.statuses: Counter[str] = Counter()
        self.failures: list[str] = []
        self.feedback_ids: list[str] = []
        self.predictions = 0
        super().__init__(*(functools.partial(self._predict, n) for n in range(clients)), self._report)

    def _record(self, kind: str, send: Any) -> httpx.Response | None:
        try:
            response: httpx.Response = send()
        except httpx.HTTPError as exc:
            with self.lock:
                self.statuses[f"{kind} {type(exc).__name__}"] += 1
                self.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        with self.lock:
            self.statuses[f"{kind} {response.status_code}"] += 1
            if response.status_code >= 300:
                self.failures.append(f"{kind}: {response.status_code} {response.text[:200]}")
        return response

    def _predict(self, n: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            for i in itertools.count(n):
                if self.done.is_set():
                    return
                image = self.images[i % len(self.images)]
                response = self._record(
                    "predict",
                    lambda image=image: client.post("/v1/predict", files={"file": ("x.png", image, "image/png")}),
                )
                if response is not None and response.status_code == 200:
                    with self.lock:
                        self.predictions += 1
                if i % 10 == 0:
                    self._record("page", lambda: client.get("/"))

    def _report(self) -> None:
        """Below the per-client feedback rate (every client is one address here)."""
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            for i in itertools.count():
                if self.done.wait(2.5):
                    return
                image = self.images[i % len(self.images)]
                response = self._record(
                    "feedback",
                    lambda i=i, image=image: client.post(
                        "/v1/feedback",
                        data={"label": "ai" if i % 2 else "real", "note": "rollout"},
                        files={"file": ("fb.png", image, "image/png")},
                    ),
                )
                if response is not None and response.status_code in (201, 202):
                    self.feedback_ids.append(response.json()["id"])

    def wait_for(self, predictions: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.predictions < predictions and time.monotonic() < deadline:
            time.sleep(0.1)


# --- the test -------------------------------------------------------------------------------------


@contextmanager
def haproxy(env: dict[str, str], logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(logs / "proxy.log", "ab") as log:  # a restarted proxy logs after the first one
        process = subprocess.Popen(  # noqa: S603
            ["haproxy", "-W", "-db", "-f", str(HAPROXY_CFG)],  # the image's CMD, in the foreground  # noqa: S607
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f} s")


@dataclass
class Deployment:
    """Compose's serving stack without Docker: replicas behind the proxy, a promoted model in S3."""

    containers: Containers
    dns: DNS
    proxy: subprocess.Popen[bytes]
    proxy_env: dict[str, str]  # what it was started with (``haproxy`` starts another)
    base: str  # where clients connect (the proxy's published port)
    monitor: str  # the proxy's monitor frontend
    store: ObjectStore
    version: str
    logs: Path


@contextmanager
def deployment(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replicas: int | None = None,
    serving: dict[str, str] | None = None,
    proxy: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """``replicas`` ready replicas (compose's SERVING_REPLICAS by default) behind a ready proxy;
    ``serving`` and ``proxy`` set variables on top of those services' compose environments."""
    from moto.server import ThreadedMotoServer

    from aidetect.settings import Settings
    from model.registry import Registry
    from tests.serving.onnx_models import mean_brightness_model
    from tests.serving.test_hardening import register_onnx

    dotenv = make_dotenv()
    dotenv["AIDETECT_BUCKET"] = f"aidetect-{uuid.uuid4().hex[:8]}"  # moto keeps buckets per process
    compose = load_compose(dotenv)
    services = compose["services"]
    s3_port, replica_port, proxy_port, monitor_port = (free_port() for _ in range(4))
    local = Localizer({f"minio:{ports_of(services['minio'])}": f"127.0.0.1:{s3_port}"}, tmp_path)
    serving_env = {**local.env("serving", service_env(compose, "serving")), **(serving or {})}

    # the proxy's compose environment; what only a container has is rewritten
    proxy_env = {str(k): str(v) for k, v in services["proxy"]["environment"].items()}
    upstream_host, _, upstream_port = proxy_env["AIDETECT_PROXY_UPSTREAM"].rpartition(":")
    assert upstream_host == "serving" and upstream_port in services["serving"]["expose"]
    logs = tmp_path / "logs"
    logs.mkdir()

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    with ExitStack() as stack, DNS() as dns:
        stack.callback(moto.stop)
        for key, value in serving_env.items():
            monkeypatch.setenv(key, value)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=serving_env["AIDETECT_S3_ENDPOINT_URL"],
            region_name=serving_env["AIDETECT_S3_REGION"],
            aws_access_key_id="root",
            aws_secret_access_key="root",  # noqa: S106 - moto checks no credentials
        ).create_bucket(Bucket=dotenv["AIDETECT_BUCKET"])
        store = configured_store(Settings())
        registry = Registry(store)
        version = register_onnx(registry, mean_brightness_model(tmp_path / "mean.onnx"))
        registry.promote(version, reason="test")

        command = image_cmd(dockerfile(services["serving"]) or Path())
        containers = Containers(command, {**base_env(), **serving_env}, replica_port, dns, tmp_path)
        stack.callback(containers.stop_all)
        first = [containers.start_one() for _ in range(replicas or int(dotenv["SERVING_REPLICAS"]))]
        for replica in first:
            wait_until(lambda r=replica: containers.ready(r), 90, f"{replica.name} was not ready")

        proxy_env.update(
            {
                "AIDETECT_PROXY_DNS": f"127.0.0.1:{dns.port}",
                "AIDETECT_PROXY_UPSTREAM": f"serving:{replica_port}",
                "AIDETECT_PROXY_BIND": f"127.0.0.1:{proxy_port}",
                "AIDETECT_PROXY_MONITOR": f"127.0.0.1:{monitor_port}",
                **(proxy or {}),
            }
        )
        proxy_env["PATH"] = os.environ["PATH"]
        process = stack.enter_context(haproxy(proxy_env, logs))
        base = f"http://127.0.0.1:{proxy_port}"
        monitor = f"http://127.0.0.1:{monitor_port}"
        check = services["proxy"]["healthcheck"]["test"][-1].replace("http://127.0.0.1:8404", monitor)
        wait_until(lambda: httpx.get(check, timeout=2).status_code == 200, 20, "the proxy's healthcheck failed")
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 30, "no replica behind the proxy")
        in_rotation = f'haproxy_backend_active_servers{{proxy="serving"}} {len(first)}\n'
        wait_until(lambda: in_rotation in httpx.get(f"{monitor}/metrics", timeout=2).text, 30, "a replica is not up")
        yield Deployment(containers, dns, process, proxy_env, base, monitor, store, version, logs)


@needs_haproxy
def test_rolling_deploy_replaces_every_replica_without_a_failed_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every client here is 127.0.0.1: the proxy's per-client prediction limit would refuse the load
    with deployment(tmp_path, monkeypatch, proxy={"AIDETECT_PROXY_PREDICT_PER_10S": "1000000"}) as deployed:
        containers, proxy, base, logs = deployed.containers, deployed.proxy, deployed.base, deployed.logs
        dns, store, version = deployed.dns, deployed.store, deployed.version
        assert float(containers.env["AIDETECT_DRAIN_SECONDS"]) > 0, "compose should let serving drain before it stops"

        images = [image_bytes(size=(48, 48), fmt="PNG", seed=n) for n in range(8)]
        lines: list[str] = []
        with Load(base, images) as load:
            load.wait_for(30)
            # 1. one replica, no spare: the new one takes over while the old one drains
            containers.new_image("v2")
            single = rollout(containers, timeout=90, poll=0.2, progress=lines.append)
            load.wait_for(load.predictions + 30)

            # 2. scaled to two (`--scale serving=2`), then replaced one at a time
            second = containers.start_one()
            wait_until(lambda: containers.ready(second), 90, "the second replica was not ready")
            scaled = containers.replicas()
            containers.new_image("v3")
            report = rollout(containers, timeout=90, poll=0.2, progress=lines.append)
            load.wait_for(load.predictions + 30)

            # 3. a bad image (refuses to start: a placeholder admin token with an s3:// store)
            containers.new_image("v4", AIDETECT_ADMIN_TOKEN="CHANGE_ME")
            with pytest.raises(RolloutError) as failed:
                rollout(containers, timeout=60, poll=0.2, progress=lines.append)
            load.wait_for(load.predictions + 30)
        assert proxy.poll() is None, tail(logs, "proxy")

        # a client cannot pass itself off as another address (rate limits, independent clients)
        probe = httpx.get(f"{base}/v1/model?xff-probe", headers={"X-Forwarded-For": "6.6.6.6"}, timeout=10)
        assert probe.status_code == 200
        seen = [
            line
            for replica in containers.replicas()
            for line in containers.logs(replica, 10**6).splitlines()
            if "xff-probe" in line
        ]
        assert len(seen) == 1 and seen[0].startswith("INFO:     127.0.0.1:0 - ") and "6.6.6.6" not in seen[0], seen

        # not one request failed, through three rollouts; every client kept getting answers
        assert not load.failures, (load.statuses, load.failures[:10], tail(logs, "proxy"))
        assert load.statuses["predict 200"] >= 120 and load.statuses["feedback 202"] + load.statuses["feedback 201"] > 3

        # the good rollouts: every old replica replaced by a healthy new one that took traffic
        assert [(old.name, new.name) for old, new in single.replaced] == [("serving-1", "serving-2")]
        assert [old.name for old, _ in report.replaced] == [r.name for r in scaled] == ["serving-2", "serving-3"]
        running = containers.replicas()
        assert [(r.name, r.image) for r in running] == [("serving-4", "v3"), ("serving-5", "v3")]
        for replica in running:
            health = httpx.get(containers.url(replica, "/healthz"), timeout=5).json()
            assert health == {"status": "ok", "model_version": version, "build": "v3"}
            metrics = httpx.get(containers.url(replica, "/metrics"), timeout=5).text
            served = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("aidetect_predictions_total{")  # by verdict
            )
            assert served > 0, f"{replica.name} was never sent a prediction by the proxy"
        for name in ("serving-1", "serving-2", "serving-3"):  # each drained and exited on its own, before any SIGKILL
            assert containers.exit_codes[name] in (0, -signal.SIGTERM), containers.logs(Replica(name, name))
            assert "draining for" in containers.logs(Replica(name, name), 10**6)

        # the bad rollout: stopped at the first new replica, which is gone; the v3 replicas serve on
        message = str(failed.value)
        assert "serving-6 exited while starting" in message and "AIDETECT_ADMIN_TOKEN" in message, message
        assert "0 of 2 replicas were replaced" in message, message
        assert containers.processes["serving-6"].poll() is not None
        assert containers.addresses["serving-6"] not in dns.records["serving"]
        assert sum("rolled out" in line for line in lines) == 2, lines

        # nothing accepted was lost: every prediction logged, every report stored (replicas flush on stop)
        containers.stop_all()
        keys = list(store.list("feedback/"))
        assert all(any(fid in key for key in keys) for fid in load.feedback_ids), "an accepted report is missing"
        rows = 0
        import pyarrow.parquet as pq

        for key in store.list("predictions/"):
            if key.endswith(".parquet"):
                rows += pq.ParquetFile(io.BytesIO(store.get(key))).metadata.num_rows
        assert rows == load.predictions, f"{rows} prediction log rows for {load.predictions} predictions"


# --- the Docker Compose side, on what Docker printed ----------------------------------------------

# `docker compose ps --all --format json serving` (Compose 2.26.1, Engine 20.10) during a rollout
# by bench/compose_rollout.py, labels trimmed: one JSON object per line
PS_LINES = (Path(__file__).parent / "data" / "compose-ps.jsonl").read_text()


def test_parse_ps_reads_both_compose_formats() -> None:
    from deploy.rollout import parse_ps

    rows = parse_ps(PS_LINES)
    assert [row["ID"] for row in rows] == ["2f82bd6dae49", "4ffecf47859c", "7800f5b34fcf"]
    assert parse_ps("[" + ",".join(PS_LINES.splitlines()) + "]") == rows  # Compose before 2.21: one array
    assert parse_ps("") == parse_ps("\n") == []


def test_compose_health_reads_docker_inspect() -> None:
    from deploy.rollout import compose_health

    # "{{.State.Status}} {{.RestartCount}} {{.State.Health.Status}}", as docker inspect printed them
    assert compose_health("running 0 healthy\n") == "healthy"
    assert compose_health("running 0 starting") == "starting"
    assert compose_health("running 0 unhealthy") == "unhealthy"
    assert compose_health("created 0 ") == "starting"
    assert compose_health("running 0 ") == "healthy"  # no healthcheck: running is all there is
    # a crash loop under `restart: unless-stopped` is exited, whatever the moment shows
    assert compose_health("restarting 9 unhealthy") == "exited"
    assert compose_health("running 1 starting") == "exited"
    assert compose_health("exited 0 ") == compose_health("dead 0 ") == "exited"


def test_compose_runtime_lists_running_replicas_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.rollout import ComposeRuntime

    calls: list[tuple[str, ...]] = []

    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, PS_LINES, "")

    runtime = ComposeRuntime("serving", compose_args=["--project-name", "p"])
    monkeypatch.setattr(runtime, "_run", run)
    assert [r.name for r in runtime.replicas()] == [
        "aidetect-rollout-bench-serving-3",
        "aidetect-rollout-bench-serving-4",
    ]
    assert calls[-1] == ("docker", "compose", "--project-name", "p", "ps", "--format", "json", "serving")


def test_compose_runtime_clears_stale_containers_and_scales_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the docker CLI is played here (its output as recorded in data/compose-ps.jsonl)."""
    import json

    from deploy.rollout import ComposeRuntime

    rows = [json.loads(line) for line in PS_LINES.splitlines()]  # 2 running, 1 restarting
    calls: list[tuple[str, ...]] = []

    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[-4:-1] == ("ps", "--format", "json") or "--all" in args:
            shown = rows if "--all" in args else [r for r in rows if r["State"] == "running"]
            return subprocess.CompletedProcess(args, 0, "\n".join(json.dumps(r) for r in shown), "")
        if args[:3] == ("docker", "rm", "--force"):
            rows[:] = [r for r in rows if r["ID"] != args[3]]
        if "up" in args:
            rows.append(
                {**rows[0], "ID": "newnewnew", "Name": "p-serving-6", "CreatedAt": "2026-11-25 21:40:00 +0000 UTC"}
            )
        return subprocess.CompletedProcess(args, 0, "", "")

    runtime = ComposeRuntime("serving", compose_args=["--project-name", "p"])
    monkeypatch.setattr(runtime, "_run", run)
    new = runtime.start_one()
    assert new.id == "newnewnew"
    assert ("docker", "rm", "--force", "4ffecf47859c") in calls  # the crash-looping one, before scaling
    up = next(c for c in calls if "up" in c)
    assert up[up.index("--scale") + 1] == "serving=3" and "--no-recreate" in up and "--no-deps" in up
