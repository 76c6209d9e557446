"""Child processes of the demo and the local stack: each in its own process group, logging to a file.

``start_process`` is the one way both start a service. The demo leaves its services running and
records their pids (``start_recorded``) for a later ``aidetect stop`` (``stop_recorded``); the
stack keeps its ``Children`` and stops them itself (``Children.stop``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path


def start_process(
    name: str, command: list[str], log_dir: Path, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``command`` in a new session (its own process group), stdout and stderr appended to ``log_dir/name.log``."""
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(  # noqa: S603 - our own commands (this venv's binaries), no shell
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )


def start_recorded(name: str, command: list[str], run_dir: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """``start_process`` with the log in ``run_dir``, and its pid kept in ``run_dir/name.pid``."""
    process = start_process(name, command, run_dir, env)
    (run_dir / f"{name}.pid").write_text(str(process.pid))
    return process


def stop_recorded(run_dir: Path) -> list[str]:
    """SIGTERM the process groups whose pids ``start_recorded`` kept in ``run_dir``; the names of those signalled."""
    stopped = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            stopped.append(pid_file.stem)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pid_file.unlink(missing_ok=True)
    return stopped


class Children:
    """Processes started with ``start_process`` from one place: watched together, stopped together."""

    def __init__(self, log_dir: Path, env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.log_dir, self.env, self.cwd = log_dir, env, cwd
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        process = start_process(name, command, self.log_dir, self.env, self.cwd)
        self.started.append((name, process))
        return process

    def check(self) -> None:
        """RuntimeError if one of them has exited."""
        for name, process in self.started:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}; see {self.log_dir / name}.log")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every process group still running, last started first; SIGKILL what is left after ``grace`` s."""
        last_first = [process for _, process in reversed(self.started)]
        for process in last_first:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in last_first:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
