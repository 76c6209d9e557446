"""docker-compose.yml's services, without Docker, from the environment compose gives them.

The compose file is parsed (anchors and ``<<`` merge keys resolved), interpolated from a
test .env built from .env.example (every CHANGE_ME replaced by a generated secret), and
each service's environment is its image's ``ENV`` (docker/*.Dockerfile) overlaid with its
compose ``environment``. Only container hostnames (minio:9000, prefect-server:4200), the
ports and the container paths (/var/lib/aidetect, /app) are rewritten; then the same set
of services runs on 127.0.0.1:

- minio: moto's S3 server; minio-init: the bucket, created with the root credentials
- postgres + prefect-server: ``prefect server start`` (the compose command) on SQLite
- prefect-deploy: ``aidetect deploy``
- serving: the serving image's CMD (``aidetect serve``)
- worker-cpu: the compose command (``prefect worker start --pool cpu ... --with-healthcheck``)

and must work end to end: each compose healthcheck URL answers, serving loads the production
model from the bucket and predicts, the admin token guards /v1/admin, and the worker runs a
gather-feedback deployment run whose dataset version lands in the bucket.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from storage import configured_store
from tests.deploy.test_configs import interpolate
from tests.helpers import agreed_report, free_port, image_bytes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(?P<port>\d+)(?P<path>/[^'\"\s]*)")
CONTAINER_HOME = "/var/lib/aidetect"
CONTAINER_CODE = "/app"

AIDETECT_ENV = {"AIDETECT_STORE_URL", "AIDETECT_S3_ENDPOINT_URL", "AIDETECT_S3_REGION"}
AIDETECT_ENV |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# What each service's process needs from its compose `environment` (not from its image).
REQUIRED = {
    "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "minio-init": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "AIDETECT_BUCKET"}
    | {"AIDETECT_S3_ACCESS_KEY", "AIDETECT_S3_SECRET_KEY"},
    "prefect-server": {"PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_HOST", "PREFECT_UI_API_URL"},
    "prefect-deploy": AIDETECT_ENV | {"PREFECT_API_URL"},
    "serving": AIDETECT_ENV | {"AIDETECT_MODEL_ALIAS", "AIDETECT_ADMIN_TOKEN", "AIDETECT_REPLICAS_DIR"},
    "worker-cpu": AIDETECT_ENV | {"PREFECT_API_URL"},
    "worker-gpu": AIDETECT_ENV | {"PREFECT_API_URL"},
}
# ... and from its image (docker/*.Dockerfile ENV): where it keeps state, where the flows are.
REQUIRED_FROM_IMAGE = {
    "serving": {"AIDETECT_HOME"},
    "prefect-deploy": {"AIDETECT_HOME", "AIDETECT_CODE_DIR", "PREFECT_HOME"},
    "worker-cpu": {"AIDETECT_HOME", "AIDETECT_CODE_DIR", "PREFECT_HOME"},
    "worker-gpu": {"AIDETECT_HOME", "AIDETECT_CODE_DIR", "PREFECT_HOME"},
}


# --- compose, as compose reads it --------------------------------------------------------------


def make_dotenv() -> dict[str, str]:
    """.env.example with every CHANGE_ME replaced by a generated secret (what `cp .env.example .env` asks)."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            value = value.strip()
            env[key.strip()] = secrets.token_urlsafe(16) if value == "CHANGE_ME" else value
    return env


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))  # resolves anchors and <<
    return compose


def ports_of(service: dict[str, Any]) -> str:
    """The container port of a service's first published port (minio: 9000)."""
    return str(service["ports"][0]).rsplit(":", 1)[1]


def dockerfile(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    return ROOT / build["context"] / build["dockerfile"] if isinstance(build, dict) else None


def image_env(path: Path | None) -> dict[str, str]:
    """The ``ENV`` of a Dockerfile (the ``KEY=value`` form, with continuation lines)."""
    if path is None:
        return {}
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    args: dict[str, str] = {}  # ARG defaults, which ENV values may name (${AIDETECT_BUILD})
    for line in text.splitlines():
        if line.startswith("ARG ") and "=" in line:
            key, _, value = line[4:].strip().partition("=")
            args[key] = value
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], ""), value)
    return env


def image_cmd(path: Path) -> list[str]:
    commands = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
    command: list[str] = json.loads(commands[-1][4:])
    return command


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    """What a container of ``name`` sees: its image's ENV, then its compose ``environment``."""
    service = compose["services"][name]
    environment = service.get("environment", {})
    assert isinstance(environment, dict), f"{name}: environment should be a mapping"
    return {**image_env(dockerfile(service)), **{k: str(v) for k, v in environment.items()}}


def missing_variables(compose: dict[str, Any]) -> list[str]:
    """``service: VAR`` for each variable a service needs that compose (or its image) does not set."""
    missing = []
    for name, needed in REQUIRED.items():
        environment = compose["services"][name].get("environment", {})
        missing += [f"{name}: {k} (compose)" for k in sorted(needed) if not str(environment.get(k) or "")]
    for name, needed in REQUIRED_FROM_IMAGE.items():
        found = service_env(compose, name)
        missing += [f"{name}: {k} (image or compose)" for k in sorted(needed) if not found.get(k)]
    return missing


def test_every_service_gets_what_it_needs_from_compose() -> None:
    env = make_dotenv()
    compose = load_compose(env)
    assert not missing_variables(compose)

    # ... and the values agree with each other and with the services they name
    init = compose["services"]["minio-init"]["environment"]
    minio_port = ports_of(compose["services"]["minio"])
    server = compose["services"]["prefect-server"]
    server_port = server["command"][server["command"].index("--port") + 1]
    for name in ("prefect-deploy", "serving", "worker-cpu", "worker-gpu"):
        values = compose["services"][name]["environment"]
        assert values["AIDETECT_S3_ENDPOINT_URL"] == f"http://minio:{minio_port}", name
        assert values["AIDETECT_STORE_URL"].startswith(f"s3://{init['AIDETECT_BUCKET']}/"), name
        assert values["AWS_ACCESS_KEY_ID"] == init["AIDETECT_S3_ACCESS_KEY"] == env["AIDETECT_S3_ACCESS_KEY"], name
        assert values["AWS_SECRET_ACCESS_KEY"] == init["AIDETECT_S3_SECRET_KEY"], name
        if name != "serving":
            assert values["PREFECT_API_URL"] == f"http://prefect-server:{server_port}/api", name
    assert compose["services"]["serving"]["environment"]["AIDETECT_ADMIN_TOKEN"] == env["AIDETECT_ADMIN_TOKEN"]

    # a variable removed from the compose file (here: from the shared anchor) is caught
    broken = COMPOSE.read_text().replace("  AIDETECT_S3_ENDPOINT_URL: http://minio:9000\n", "", 1)
    assert broken != COMPOSE.read_text()
    assert "serving: AIDETECT_S3_ENDPOINT_URL (compose)" in missing_variables(yaml.safe_load(interpolate(broken, env)))
    # a required secret missing from the .env stops compose (and this test) from starting
    with pytest.raises(KeyError, match="AIDETECT_ADMIN_TOKEN"):
        load_compose({k: v for k, v in env.items() if k != "AIDETECT_ADMIN_TOKEN"})


# --- the same services on 127.0.0.1 ------------------------------------------------------------


class Localizer:
    """Container hostnames, ports and paths -> their stand-ins on this machine."""

    def __init__(self, hosts: dict[str, str], tmp: Path) -> None:
        self.hosts = hosts
        self.tmp = tmp

    def value(self, service: str, value: str) -> str:
        for container, local in self.hosts.items():
            value = value.replace(container, local)
        if value == CONTAINER_HOME or value.startswith(CONTAINER_HOME + "/"):
            value = str(self.tmp / service) + value[len(CONTAINER_HOME) :]
        if value == CONTAINER_CODE or value.startswith(CONTAINER_CODE + "/"):
            value = str(ROOT) + value[len(CONTAINER_CODE) :]
        return value

    def env(self, service: str, env: dict[str, str]) -> dict[str, str]:
        return {k: self.value(service, v) for k, v in env.items()}


def base_env() -> dict[str, str]:
    """This process's environment without anything compose is meant to provide."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AIDETECT_", "AWS_"))}


def group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def stop(process: subprocess.Popen[bytes]) -> set[int]:
    """SIGTERM to the process group, SIGKILL after 20 s; what is still alive after that."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None and not group_members(process.pid):
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while (process.poll() is None or group_members(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
    return group_members(process.pid)


@contextmanager
def started(name: str, command: list[str], env: dict[str, str], logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A service in its own process group (a flow run's process joins it), stopped on the way out."""
    executable = BIN / command[0]
    with open(logs / f"{name}.log", "wb") as log:
        process = subprocess.Popen(
            [str(executable) if executable.exists() else command[0], *command[1:]],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        except BaseException:
            stop(process)
            raise
        left = stop(process)
        assert not left, f"{name}: processes {left} of its group outlived SIGKILL"


def tail(logs: Path, name: str) -> str:
    path = logs / f"{name}.log"
    return f"\n--- {name}.log ---\n" + (path.read_text(errors="replace")[-4000:] if path.exists() else "(none)")


def wait_ok(url: str, process: subprocess.Popen[bytes], logs: Path, name: str, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{name} exited with {process.returncode}" + tail(logs, name)
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{name}: {url} did not answer 200 within {timeout:.0f} s" + tail(logs, name))


def healthcheck_url(service: dict[str, Any], ports: dict[str, int]) -> str:
    """The URL a compose healthcheck probes, on the port the local stand-in listens on."""
    match = HEALTH_URL.search(" ".join(service["healthcheck"]["test"]))
    assert match, service["healthcheck"]
    return f"http://127.0.0.1:{ports[match['port']]}{match['path']}"


def listen_on(command: list[str], port: int) -> list[str]:
    """A container command, listening on 127.0.0.1:port instead of 0.0.0.0:<container port>."""
    command = list(command)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in command:
            command[command.index(flag) + 1] = value
    return command


def test_the_compose_services_work_together_from_the_compose_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from aidetect.settings import Settings
    from model.datasets import list_datasets
    from model.registry import Registry
    from tests.serving.onnx_models import mean_brightness_model
    from tests.serving.test_hardening import register_onnx

    dotenv = make_dotenv()
    # moto keeps buckets per process: a bucket of its own, in case this session made an `aidetect` one
    dotenv["AIDETECT_BUCKET"] = f"aidetect-{uuid.uuid4().hex[:8]}"
    compose = load_compose(dotenv)
    services = compose["services"]
    logs = tmp_path / "logs"
    logs.mkdir()

    s3_port, prefect_port, serving_port, worker_health_port = (free_port() for _ in range(4))
    minio_port, server_port = ports_of(services["minio"]), ports_of(services["prefect-server"])
    ports = {minio_port: s3_port, server_port: prefect_port, "8000": serving_port, "8080": worker_health_port}
    local = Localizer(
        {
            f"minio:{minio_port}": f"127.0.0.1:{s3_port}",
            f"prefect-server:{server_port}": f"127.0.0.1:{prefect_port}",
            f"localhost:{dotenv['PREFECT_PORT']}": f"127.0.0.1:{prefect_port}",
        },
        tmp_path,
    )
    envs = {name: local.env(name, service_env(compose, name)) for name in REQUIRED}
    for name, env in envs.items():
        leftover = {k: v for k, v in env.items() if re.search(r"//(minio|prefect-server|postgres)[:/]", v)}
        assert not leftover, f"{name}: container hostnames left after rewriting: {leftover}"
        for key in ("AIDETECT_HOME", "PREFECT_HOME"):  # the named volumes
            if key in env:
                Path(env[key]).mkdir(parents=True, exist_ok=True)

    # minio -> moto (its root account is not checked: any credentials pass), minio-init -> the bucket
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    with ExitStack() as stack:
        stack.callback(moto.stop)
        import boto3

        init = envs["minio-init"]
        endpoint = envs["serving"]["AIDETECT_S3_ENDPOINT_URL"]
        s3_root = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=envs["serving"]["AIDETECT_S3_REGION"],
            aws_access_key_id=init["MINIO_ROOT_USER"],
            aws_secret_access_key=init["MINIO_ROOT_PASSWORD"],
        )
        s3_root.create_bucket(Bucket=init["AIDETECT_BUCKET"])

        # postgres + prefect-server -> the compose command on SQLite
        server_env = {
            **base_env(),
            **envs["prefect-server"],
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_HOME": str(tmp_path / "prefect-server"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        assert envs["prefect-server"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
        server = stack.enter_context(
            started("prefect-server", listen_on(services["prefect-server"]["command"], prefect_port), server_env, logs)
        )

        # the production model, registered into the bucket with the serving account's settings
        for key, value in envs["serving"].items():
            monkeypatch.setenv(key, value)
        store = configured_store(Settings())
        assert store.url == f"s3://{init['AIDETECT_BUCKET']}/{dotenv['AIDETECT_STORE_PREFIX']}"
        registry = Registry(store)
        version = register_onnx(registry, mean_brightness_model(tmp_path / "mean.onnx"))
        registry.promote(version, reason="test")

        # serving -> the serving image's CMD
        serving_cmd = listen_on(image_cmd(dockerfile(services["serving"]) or Path()), serving_port)
        serving = stack.enter_context(started("serving", serving_cmd, {**base_env(), **envs["serving"]}, logs))

        # prefect-deploy -> its compose command, once the server is healthy
        wait_ok(healthcheck_url(services["prefect-server"], ports), server, logs, "prefect-server", 120)
        deploy = subprocess.run(
            [str(BIN / services["prefect-deploy"]["command"][0]), *services["prefect-deploy"]["command"][1:]],
            env={**base_env(), **envs["prefect-deploy"]},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

        # worker-cpu -> its compose command; its healthcheck port is the one thing compose leaves to the image
        worker_env = {
            **base_env(),
            **envs["worker-cpu"],
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(worker_health_port),
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # poll faster than the default 10 s: a shorter test
        }
        worker = stack.enter_context(started("worker-cpu", services["worker-cpu"]["command"], worker_env, logs))

        # serving: healthy, ready with the model from the bucket, predicts, admin behind the token
        wait_ok(healthcheck_url(services["serving"], ports), serving, logs, "serving", 60)
        ready = wait_ok(f"http://127.0.0.1:{serving_port}/readyz", serving, logs, "serving", 60)
        assert ready.json()["model_version"] == version
        base = f"http://127.0.0.1:{serving_port}"
        predicted = httpx.post(f"{base}/v1/predict", files={"file": ("x.jpg", image_bytes(seed=3))}, timeout=30)
        assert predicted.status_code == 200, predicted.text + tail(logs, "serving")
        assert predicted.json()["model_version"] == version
        assert predicted.json()["label"] in {"ai", "real", "uncertain"}
        assert httpx.post(f"{base}/v1/admin/reload", timeout=10).status_code == 401
        token = {"Authorization": f"Bearer {envs['serving']['AIDETECT_ADMIN_TOKEN']}"}
        reloaded = httpx.post(f"{base}/v1/admin/reload", headers=token, timeout=30)
        assert reloaded.status_code == 200, reloaded.text

        # worker-cpu: healthy, and runs a gather-feedback deployment run into the bucket
        wait_ok(healthcheck_url(services["worker-cpu"], ports), worker, logs, "worker-cpu", 60)
        agreed_report(store)  # two independent clients agree: accepted
        api = {PREFECT_API_URL: envs["worker-cpu"]["PREFECT_API_URL"]}
        with temporary_settings(api), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("gather-feedback/aidetect")
            assert deployment.work_pool_name == "cpu"
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"retrain_after": 1000})
            deadline = time.monotonic() + 120
            state = client.read_flow_run(run.id).state
            while not (state and state.is_final()) and time.monotonic() < deadline:
                assert worker.poll() is None, "worker-cpu exited" + tail(logs, "worker-cpu")
                time.sleep(1)
                state = client.read_flow_run(run.id).state
        assert state is not None and state.is_completed(), f"{state}" + tail(logs, "worker-cpu")
        versions = list_datasets(store)["feedback"]
        assert len(versions) == 1
        prefix = f"{dotenv['AIDETECT_STORE_PREFIX']}/datasets/feedback/{versions[0]}/"
        in_bucket = s3_root.list_objects_v2(Bucket=init["AIDETECT_BUCKET"], Prefix=prefix).get("Contents", [])
        assert any(o["Key"].endswith("manifest.parquet") for o in in_bucket), in_bucket

    # everything stopped: no process group left (checked in started()), nothing listening
    for port in (prefect_port, serving_port, worker_health_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
