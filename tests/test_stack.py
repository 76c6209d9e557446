"""``make up`` (``aidetect up``): the local stack starts with one command and Ctrl-C stops all of it."""

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


def _children_of(pid: int) -> set[int]:
    """Every live process whose parent chain leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_up_starts_the_stack_and_ctrl_c_stops_all_of_it(tmp_path: Path) -> None:
    port, prefect_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AIDETECT_"))}
    process = subprocess.Popen(
        [str(BIN / "aidetect"), "up", "--home", str(tmp_path / "up"), "--port", str(port)]
        + ["--prefect-port", str(prefect_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        assert "Ctrl-C stops everything" in "".join(output), "".join(output)
        api = f"http://127.0.0.1:{prefect_port}/api"
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        assert len(deployments) == 5
        pools = {p["name"] for p in httpx.post(f"{api}/work_pools/filter", json={}, timeout=10).json()}
        assert pools == {"cpu", "gpu"}
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        started = _children_of(process.pid)
        assert len(started) >= 4  # server, two workers, serving (and their own children)

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
        assert process.stdout.read().count("stopping") == 1
        time.sleep(1)
        alive = {pid for pid in started if Path(f"/proc/{pid}").exists()}
        assert not alive, f"still running after Ctrl-C: {alive}"
        for url in (f"{api}/health", f"http://127.0.0.1:{port}/healthz"):
            try:
                httpx.get(url, timeout=2)
                raise AssertionError(f"{url} still answers")
            except httpx.TransportError:
                pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
