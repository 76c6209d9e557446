"""The README's "Using the API" examples (curl and Python) run as written against real serving."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from feedback.store import iter_feedback
from tests.helpers import image_bytes, serving_process
from tests.serving.test_hardening import mean_model_store

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_BASE = "http://localhost:8000"


def _examples() -> dict[str, str]:
    """The first ``sh`` and ``python`` blocks of the README's "Using the API" section."""
    section = README.read_text().split("\n## Using the API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    found: dict[str, str] = {}
    for language, code in blocks:
        found.setdefault(language, code)
    assert set(found) == {"sh", "python"}, "the section has one curl (sh) and one Python example"
    assert all(EXAMPLE_BASE in code for code in found.values())
    return found


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq")
def test_the_readme_api_examples_work_against_real_serving(tmp_path: Path) -> None:
    examples = _examples()
    store = mean_model_store(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "photo.jpg").write_bytes(image_bytes(seed=1))
    (work / "other.png").write_bytes(image_bytes(seed=2, fmt="PNG"))
    env = {"AIDETECT_HOME": str(tmp_path / "home"), "AIDETECT_STORE_URL": str(store.root)}
    with serving_process(env, tmp_path / "serving.log") as (_, base):
        shell = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", examples["sh"].replace(EXAMPLE_BASE, base)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shell.returncode == 0, shell.stdout + shell.stderr
        answers, decoder, text = [], json.JSONDecoder(), shell.stdout.strip()
        while text:  # each curl prints one JSON document
            answer, end = decoder.raw_decode(text)
            answers.append(answer)
            text = text[end:].lstrip()
        prediction, batch, uploaded, status, model, health, ready = answers
        version = model["version"]
        assert prediction["model_version"] == version and prediction["label"] in {"ai", "real", "uncertain"}
        assert [r["model_version"] for r in batch["results"]] == [version, version]
        assert uploaded["status"] == "quarantined" and uploaded["claimed_label"] == "ai"
        assert status["status"] == "quarantined" and status["claimed_label"] == "real"
        assert health["model_version"] == ready["model_version"] == version

        python = subprocess.run(
            [sys.executable, "-c", examples["python"].replace(EXAMPLE_BASE, base)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert python.returncode == 0, python.stderr
        lines = python.stdout.splitlines()
        label, probability, served = lines[0].split()
        assert label in {"ai", "real", "uncertain"} and 0 <= float(probability) <= 1 and served == version
        assert lines[1:3] == [r["label"] for r in batch["results"]]  # the same images, the same model
        assert lines[3].startswith("quarantined waiting for 1 more independent report")
        assert lines[4:] == [version, ready["status"]]
    claims = sorted(r.claimed_label for r in iter_feedback(store))
    assert claims == ["ai", "real", "real"]  # two from curl, one from Python
