"""``aidetect serve`` drains on SIGTERM: health checks fail first, requests are still answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import free_port

BIN = Path(sys.executable).parent


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIDETECT_")},
        "AIDETECT_HOME": str(tmp_path / "home"),
        **env,
    }
    process = subprocess.Popen(  # noqa: S603
        [str(BIN / "aidetect"), "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("serve did not start")


def test_sigterm_drains_then_stops(tmp_path: Path) -> None:
    process, base = start(tmp_path, AIDETECT_DRAIN_SECONDS="2", AIDETECT_BUILD="abc123")
    try:
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "model_version": None, "build": "abc123"}
        signaled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 503 and "draining" in health.json()["detail"]
        assert httpx.get(f"{base}/readyz").status_code == 503
        # everything else is still answered while the load balancer takes the replica out
        assert httpx.get(f"{base}/v1/history").status_code == 200
        assert httpx.get(f"{base}/").status_code == 200
        assert process.poll() is None
        process.wait(15)
        assert time.monotonic() - signaled >= 2.0, "stopped before the drain was over"
    finally:
        if process.poll() is None:
            process.kill()
    out = process.stdout.read().decode() if process.stdout else ""
    assert "draining for 2.0 s" in out and "Application shutdown complete" in out, out
    assert process.returncode in (0, -signal.SIGTERM)


def seconds_to_exit(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM, then how long the process took to exit (killed after 15 s)."""
    signaled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
    return time.monotonic() - signaled


def test_a_second_signal_cuts_the_drain_short_and_no_drain_is_the_default(tmp_path: Path) -> None:
    process, base = start(tmp_path, AIDETECT_DRAIN_SECONDS="60")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert httpx.get(f"{base}/healthz").status_code == 503
    assert seconds_to_exit(process) < 10  # not the 60 s drain

    process, base = start(tmp_path)  # AIDETECT_DRAIN_SECONDS unset: plain uvicorn shutdown
    assert seconds_to_exit(process) < 5
    out = process.stdout.read().decode() if process.stdout else ""
    assert "draining" not in out


def test_a_bad_drain_setting_is_refused_by_name(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603
        [str(BIN / "aidetect"), "serve", "--port", str(free_port())],
        env={**os.environ, "AIDETECT_HOME": str(tmp_path), "AIDETECT_DRAIN_SECONDS": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # a bad setting is a runtime error (1), named by its variable, without a traceback
    assert result.returncode == 1 and "AIDETECT_DRAIN_SECONDS='-1'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
