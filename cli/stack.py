"""``aidetect deploy`` and ``make up``: the deployments, and the long-running local stack.

``deploy`` creates the ``cpu`` and ``gpu`` work pools (process type) when they are missing
and registers every deployment in ``prefect.yaml`` with ``prefect deploy --all``, then the
automations that notify AIDETECT_NOTIFY_WEBHOOK_URL (``flows.notifications``; none when unset).

``up`` runs the embedded default for good: a Prefect server with its UI, the deployments,
one worker per pool and serving, all on 127.0.0.1, sharing one local folder store. It
prints where everything is and stays in the foreground; Ctrl-C (or SIGTERM) stops every
process it started, each in its own process group, and waits for them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from cli.processes import Children

ROOT = Path(__file__).resolve().parent.parent
POOLS = ("cpu", "gpu")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def wait_http(url: str, timeout: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}; see its log")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def deploy(env: dict[str, str], log: IO[bytes] | None = None) -> None:
    """Work pools (if missing), ``prefect deploy --all`` from the project root, the notifications."""
    for pool in POOLS:
        found = subprocess.run(  # noqa: S603 - fixed arguments, this venv's prefect
            [_bin("prefect"), "work-pool", "inspect", pool], env=env, capture_output=True, cwd=ROOT, check=False
        )
        if found.returncode != 0:
            subprocess.run(  # noqa: S603 - fixed arguments, this venv's prefect
                [_bin("prefect"), "work-pool", "create", pool, "--type", "process"],
                env=env,
                cwd=ROOT,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
            )
    subprocess.run(  # noqa: S603 - fixed arguments, this venv's prefect
        [_bin("prefect"), "--no-prompt", "deploy", "--all"],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
    )
    # the automations that post drift, challenger verdicts and failed runs to
    # AIDETECT_NOTIFY_WEBHOOK_URL (none when it is unset)
    subprocess.run(  # noqa: S603 - fixed arguments, this interpreter
        [sys.executable, "-m", "flows.notifications"],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
    )


def _stack_env(home: Path, prefect_url: str) -> dict[str, str]:
    """The environment of every process of the stack: one home, one Prefect API, unbuffered output."""
    return {
        **os.environ,
        "AIDETECT_HOME": str(home),
        "AIDETECT_CODE_DIR": str(ROOT),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": f"{prefect_url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }


def _start_stack(children: Children, env: dict[str, str], args: argparse.Namespace, prefect_url: str) -> None:
    """The Prefect server, the deployments, one worker per pool and serving, each waited for."""
    server = children.start(
        "prefect-server",
        [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(args.prefect_port)],
    )
    wait_http(f"{prefect_url}/api/health", 180, "the Prefect server", server)
    with open(children.log_dir / "deploy.log", "ab") as log:
        deploy(env, log)
    for pool in POOLS:
        children.start(f"worker-{pool}", [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process"])
    serving = children.start("serving", [_bin("aidetect"), "serve", "--host", "127.0.0.1", "--port", str(args.port)])
    wait_http(f"http://127.0.0.1:{args.port}/healthz", 120, "serving", serving)


def run_up(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect_url = f"http://127.0.0.1:{args.prefect_port}"
    env = _stack_env(home, prefect_url)
    # where the flows' artifacts link a model's plots and the drift reports: the serving started here
    env.setdefault("AIDETECT_PUBLIC_URL", f"http://127.0.0.1:{args.port}")
    children = Children(logs, env, cwd=ROOT)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"aidetect up: home {home}, logs in {logs}", flush=True)
    try:
        _start_stack(children, env, args, prefect_url)
        print(
            f"""
  Prefect UI   {prefect_url}          (deployments, runs, artifacts, automations)
  serving      http://127.0.0.1:{args.port}/   (the web page; API under /v1, metrics at /metrics)
  artifacts    link plots and drift reports at {env["AIDETECT_PUBLIC_URL"]} (AIDETECT_PUBLIC_URL)
  store        {env.get("AIDETECT_STORE_URL") or home / "store"}
  workers      pools {", ".join(POOLS)} (one process worker each)

Ctrl-C stops everything.""",
            flush=True,
        )
        while not stopping:
            children.check()
            time.sleep(0.5)
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"aidetect up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("aidetect up: stopping " + ", ".join(name for name, _ in reversed(children.started)), flush=True)
        children.stop()
