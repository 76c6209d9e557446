"""The ``aidetect`` command: what it prints, and clear errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import image_bytes


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIDETECT_HOME": str(home)}
    env.pop("AIDETECT_STORE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "aidetect.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_data_import_reports_taken_and_skipped_files(tmp_path: Path) -> None:
    for label in ("ai", "real"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "src" / label / f"{i}.png").write_bytes(
                image_bytes(seed=i + (10 if label == "ai" else 0), fmt="PNG")
            )
    (tmp_path / "src" / "ai" / "bad.jpg").write_bytes(b"garbage")
    result = _run(["data", "import", str(tmp_path / "src"), "--name", "toy"], tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "imported 6 images into toy@" in result.stdout
    assert "(1 skipped)" in result.stdout
    assert "skipped ai/bad.jpg: not a recognised image format" in result.stderr
    listed = _run(["data", "list"], tmp_path / "home")
    assert listed.stdout.startswith("toy@") and "6 images" in listed.stdout


def test_errors_name_the_problem(tmp_path: Path) -> None:
    missing = _run(["data", "import", str(tmp_path / "nowhere"), "--name", "x"], tmp_path / "home")
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr
    bad_limit = _run(["data", "import", str(tmp_path), "--name", "x", "--limit-per-class", "0"], tmp_path / "home")
    assert bad_limit.returncode == 2 and "positive integer" in bad_limit.stderr
    unknown = _run(["model", "promote", "no-such-version"], tmp_path / "home")
    assert unknown.returncode == 2 and "not registered" in unknown.stderr
    no_rollback = _run(["model", "rollback"], tmp_path / "home")
    assert no_rollback.returncode == 2 and "no previous version" in no_rollback.stderr
    bad_store = subprocess.run(
        [sys.executable, "-m", "aidetect.cli", "data", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "AIDETECT_STORE_URL": "ftp://host/x"},
        timeout=60,
    )
    assert bad_store.returncode == 2 and "store_url" in bad_store.stderr
