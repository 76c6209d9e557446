"""Rolling replacement of a Compose service's replicas: one at a time, no failed request.

    python3 deploy/rollout.py serving          # on the Docker host, in the checkout

For each running replica, oldest first:

1. start one more replica from the current compose file and ``.env`` (the new image tag),
   next to the old ones: ``docker compose up -d --no-deps --no-recreate --scale serving=N+1``;
2. wait until Docker reports it healthy and, if the old replicas were ready (``/readyz``: a
   model loaded and its canaries passed), until it is ready too; then ``--settle`` seconds
   more, so that the load balancer (``proxy``, deploy/haproxy.cfg), which finds it through
   Docker's DNS and health-checks it every second, already sends it requests;
3. stop one old replica with ``docker stop``: its SIGTERM starts serving's drain
   (``AIDETECT_DRAIN_SECONDS``, 8 s in compose: ``/healthz`` answers 503, the proxy takes it
   out, requests in flight finish), then the listener closes and the container is removed.

A new replica that does not become healthy in time is stopped and the rollout fails,
naming it and quoting its last log lines; the old replicas not yet replaced keep serving.
The module uses the standard library only, so a bare ``python3`` on the host runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess  # noqa: S404 - runs the docker CLI with fixed argument lists, never a shell
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class RolloutError(RuntimeError):
    """The rollout stopped; the message says where and what still runs."""


@dataclass(frozen=True)
class Replica:
    id: str
    name: str
    image: str = ""


class Runtime(Protocol):
    """Where the replicas run: Docker Compose here, processes in the tests."""

    def replicas(self) -> list[Replica]:
        """The running replicas, oldest first."""
        ...

    def start_one(self) -> Replica:
        """One more replica from the current configuration, next to the running ones."""
        ...

    def health(self, replica: Replica) -> str:
        """``starting``, ``healthy``, ``unhealthy`` or ``exited``."""
        ...

    def ready(self, replica: Replica) -> bool:
        """Whether its readiness endpoint answers 200."""
        ...

    def stop(self, replica: Replica) -> None:
        """SIGTERM, the grace period, then remove it."""
        ...

    def logs(self, replica: Replica, lines: int = 30) -> str: ...


@dataclass
class Report:
    replaced: list[tuple[Replica, Replica]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "replaced": [{"old": old.name, "new": new.name, "image": new.image} for old, new in self.replaced],
            "seconds": round(self.seconds, 1),
        }


def rollout(
    runtime: Runtime,
    *,
    timeout: float = 180.0,
    poll: float = 1.0,
    settle: float = 3.0,
    progress: Callable[[str], None] = print,
) -> Report:
    """Replace every running replica, one at a time (see the module's docstring).

    ``settle``: seconds between the new replica being healthy and the old one being stopped,
    so that the load balancer's own health check has seen the new one first (HAProxy: DNS
    asked every 1 s, a down server checked every 1 s).
    """
    started = time.monotonic()
    old = runtime.replicas()
    if not old:
        raise RolloutError("no running replica to replace: start the service first (docker compose up -d)")
    # the new replicas must reach what the old ones reach: ready (a model loaded), or only healthy
    # when no old replica has a model (a fresh system)
    need_ready = any(_probe_ready(runtime, replica) for replica in old)
    report = Report()
    for number, replica in enumerate(old, 1):
        new = runtime.start_one()
        try:
            progress(f"[{number}/{len(old)}] started {new.name} ({new.image}); waiting for it to be healthy")
            problem = _wait(runtime, new, need_ready, timeout, poll)
        except BaseException:  # interrupted (Ctrl-C, a cancelled CI job): do not leave it behind
            _stop_quietly(runtime, new)
            raise
        if problem:
            last = runtime.logs(new)
            stopped = _stop_quietly(runtime, new)
            raise RolloutError(
                f"{new.name} {problem}; {'it was stopped' if stopped else 'stopping it failed too'}. "
                f"{len(report.replaced)} of {len(old)} replicas were replaced, the other "
                f"{len(old) - len(report.replaced)} still run their old image. Its last log lines:\n{last}"
            )
        progress(f"[{number}/{len(old)}] {new.name} is {'ready' if need_ready else 'healthy'}; stopping {replica.name}")
        time.sleep(settle)
        runtime.stop(replica)
        report.replaced.append((replica, new))
    report.seconds = time.monotonic() - started
    progress(f"rolled out {len(old)} replicas in {report.seconds:.0f} s")
    return report


def _probe_ready(runtime: Runtime, replica: Replica, tries: int = 3) -> bool:
    """Readiness, asked up to ``tries`` times (one slow answer is not "no model")."""
    for attempt in range(tries):
        if runtime.ready(replica):
            return True
        if attempt + 1 < tries:
            time.sleep(0.5)
    return False


def _stop_quietly(runtime: Runtime, replica: Replica) -> bool:
    try:
        runtime.stop(replica)
    except Exception as exc:  # the error being reported matters more
        print(f"rollout: could not stop {replica.name}: {exc}", file=sys.stderr)
        return False
    return True


def _wait(runtime: Runtime, replica: Replica, need_ready: bool, timeout: float, poll: float) -> str | None:
    """None once healthy (and ready if asked), else what went wrong."""
    deadline = time.monotonic() + timeout
    state = "starting"
    while time.monotonic() < deadline:
        state = runtime.health(replica)
        if state == "exited":
            return "exited while starting"
        if state == "unhealthy":
            return "is unhealthy"
        if state == "healthy" and (not need_ready or runtime.ready(replica)):
            return None
        time.sleep(poll)
    what = "ready" if state == "healthy" else "healthy"
    return f"was not {what} within {timeout:.0f} s (last health: {state})"


# --- Docker Compose ----------------------------------------------------------------------------


class ComposeRuntime:
    """A service of a Compose project, through the ``docker`` CLI (Compose v2)."""

    def __init__(
        self,
        service: str,
        *,
        compose_args: Sequence[str] = (),
        port: int = 8000,
        ready_path: str = "/readyz",
        docker: str = "docker",
    ) -> None:
        self.service = service
        self.compose = [docker, "compose", *compose_args]
        self.docker = docker
        self.port = port
        self.ready_path = ready_path

    def _run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # stdin closed: run over `ssh host bash -s < deploy.sh`, a child reading stdin would eat the script
        result = subprocess.run(  # noqa: S603
            args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RolloutError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def _containers(self, *, every: bool) -> list[Replica]:
        """This service's containers, oldest first: running ones, or ``every`` state."""
        out = self._run(*self.compose, "ps", *(["--all"] if every else []), "--format", "json", self.service).stdout
        rows = [row for row in parse_ps(out) if row.get("Service", self.service) == self.service]
        if not every:
            rows = [row for row in rows if row.get("State") == "running"]
        rows.sort(key=lambda row: (str(row.get("CreatedAt", "")), str(row.get("Name", ""))))
        return [Replica(str(row["ID"]), str(row["Name"]), str(row.get("Image", ""))) for row in rows]

    def replicas(self) -> list[Replica]:
        return self._containers(every=False)

    def start_one(self) -> Replica:
        # containers that are not running (exited, crash-looping) serve nothing, and compose would
        # count them in --scale (and restart one, on its old configuration, instead of creating)
        running_ids = {replica.id for replica in self.replicas()}
        for stale in self._containers(every=True):
            if stale.id not in running_ids:
                self._run(self.docker, "rm", "--force", stale.id)
        before = {replica.id for replica in self._containers(every=True)}
        running = len(before)
        self._run(
            *self.compose, "up", "--detach", "--no-deps", "--no-recreate",
            "--scale", f"{self.service}={running + 1}", self.service,
        )  # fmt: skip
        # every state: a new container that crashed at once is restarting, not running
        new = [replica for replica in self._containers(every=True) if replica.id not in before]
        if len(new) != 1:
            raise RolloutError(f"expected one new {self.service} container, found {len(new)}: {new}")
        return new[0]

    def health(self, replica: Replica) -> str:
        fmt = "{{.State.Status}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
        try:
            result = self._run(self.docker, "inspect", "--format", fmt, replica.id, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return "starting"  # the engine is busy: ask again
        if result.returncode != 0:
            return "exited"  # gone
        return compose_health(result.stdout)

    def ready(self, replica: Replica) -> bool:
        probe = (
            f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{self.port}{self.ready_path}', timeout=4)"
        )
        try:
            result = self._run(self.docker, "exec", replica.id, "python", "-c", probe, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def stop(self, replica: Replica) -> None:
        # docker stop waits the container's stop_grace_period (compose) before SIGKILL
        self._run(self.docker, "stop", replica.id, timeout=900)
        self._run(self.docker, "rm", replica.id)

    def logs(self, replica: Replica, lines: int = 30) -> str:
        result = self._run(self.docker, "logs", "--tail", str(lines), replica.id, check=False)
        return (result.stdout + result.stderr).strip()


def compose_health(inspected: str) -> str:
    """``docker inspect`` "status restarts health" -> starting / healthy / unhealthy / exited.

    A container that exited once counts as exited even while its restart policy brings it
    back (``restarting``, or running again with a restart count): a crash loop never
    becomes healthy, and waiting for it would only run out the timeout.
    """
    status, restarts, health = (inspected.strip().split(" ", 2) + ["", ""])[:3]
    if status in ("exited", "dead", "removing", "restarting") or (restarts.isdigit() and int(restarts) > 0):
        return "exited"
    if status != "running":
        return "starting"  # created
    return health or "healthy"  # no healthcheck: running is all Docker knows


def parse_ps(out: str) -> list[dict[str, object]]:
    """``docker compose ps --format json``: one object per line (Compose >= 2.21) or one array."""
    out = out.strip()
    if not out:
        return []
    if out.startswith("["):
        rows: list[dict[str, object]] = json.loads(out)
        return rows
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 deploy/rollout.py",
        description="Replace a Compose service's replicas one at a time (start new, wait healthy, drain old).",
    )
    parser.add_argument("service", nargs="?", default="serving")
    parser.add_argument("-f", "--file", action="append", default=[], help="compose file(s) (default: compose's own)")
    parser.add_argument("-p", "--project-name", default=None)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for a new replica to become ready")
    parser.add_argument("--port", type=int, default=8000, help="the container port serving listens on")
    parser.add_argument("--ready-path", default="/readyz")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds between a new replica being ready and an old one stopping"
    )
    args = parser.parse_args(argv)
    compose_args = [arg for path in args.file for arg in ("--file", path)]
    if args.project_name:
        compose_args += ["--project-name", args.project_name]
    runtime = ComposeRuntime(args.service, compose_args=compose_args, port=args.port, ready_path=args.ready_path)
    try:
        report = rollout(
            runtime, timeout=args.timeout, settle=args.settle, progress=lambda line: print(line, flush=True)
        )
    except (RolloutError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        print(f"rollout: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
