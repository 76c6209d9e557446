"""``aidetect demo`` empties its own folder on each run, and only ever its own: a user's AIDETECT_HOME survives."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidetect.settings import get_settings
from cli.demo import DEMO_MARK, DemoHomeRefused, demo_home, prepare_home


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``monkeypatch`` for the environment, with the settings read afresh before and after."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def _user_files(home: Path) -> dict[Path, bytes]:
    files = {
        home / "store" / "registry" / "aliases" / "production.json": b'{"version": "mine"}',
        home / "runs" / "mine" / "model.onnx": b"weights",
        home / "notes.txt": b"keep me",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_the_demo_runs_in_a_folder_of_its_own_under_aidetect_home(
    tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> None:
    user_home = tmp_path / "home"
    files = _user_files(user_home)
    settings_env.setenv("AIDETECT_HOME", str(user_home))
    home = demo_home()
    assert home == (user_home / "demo").resolve()

    prepare_home(home)
    assert (home / DEMO_MARK).is_file() and (home / "run").is_dir()
    (home / "run" / "serving.log").write_text("an earlier demo's log")
    (home / "store").mkdir()
    prepare_home(home)  # the next run: its own folder emptied...
    assert sorted(p.name for p in home.iterdir()) == sorted([DEMO_MARK, "run"])
    assert not any((home / "run").iterdir())
    assert {path: path.read_bytes() for path in files} == files  # ...the user's files untouched


def test_what_an_earlier_demo_left_running_is_stopped(tmp_path: Path) -> None:
    from cli.processes import start_recorded

    home = tmp_path / "demo"
    prepare_home(home)
    left = start_recorded("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], home / "run", os.environ)
    try:
        prepare_home(home)
        assert left.wait(timeout=30) != 0  # SIGTERM
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()
    assert (home / DEMO_MARK).is_file()


def test_the_default_folder_is_dot_aidetect_demo(tmp_path: Path, settings_env: pytest.MonkeyPatch) -> None:
    settings_env.delenv("AIDETECT_HOME", raising=False)
    settings_env.chdir(tmp_path)
    assert demo_home() == (tmp_path / ".aidetect" / "demo").resolve()


def test_an_empty_folder_is_taken_and_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    prepare_home(tmp_path / "empty")
    assert (tmp_path / "empty" / DEMO_MARK).is_file()
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(DemoHomeRefused):
        prepare_home(tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "mine"


def test_the_demo_refuses_to_empty_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """The user's files where the demo would run (``$AIDETECT_HOME/demo``): a clear error, nothing deleted."""
    user_home = tmp_path / "home"
    files = _user_files(user_home / "demo")
    data = tmp_path / "data"
    (data / "ai").mkdir(parents=True)
    (data / "real").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDETECT_")}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--data", str(data), "--newgen", str(tmp_path / "none")],
        env={**env, "AIDETECT_HOME": str(user_home)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{(user_home / 'demo').resolve()} holds files the demo did not make" in result.stderr
    assert DEMO_MARK in result.stderr and "AIDETECT_HOME" in result.stderr
    assert {path: path.read_bytes() for path in files} == files
    assert not (user_home / "demo" / DEMO_MARK).exists()


def test_aidetect_stop_finds_the_demo_under_aidetect_home(tmp_path: Path) -> None:
    """``aidetect stop`` without ``--home`` stops what the demo started in ``$AIDETECT_HOME/demo``."""
    from cli.processes import start_recorded

    home = tmp_path / "home"
    prepare_home(home / "demo")
    left = start_recorded(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], home / "demo" / "run", os.environ
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "cli", "stop"],
            env={**os.environ, "AIDETECT_HOME": str(home)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "sleeper" in out.stdout
        assert left.wait(timeout=30) != 0  # SIGTERM
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()
