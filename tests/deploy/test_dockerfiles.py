"""The images install the locked third-party dependencies before the source is copied in.

So a commit that changes only code rebuilds (and pushes) only the small layers of the code,
not the ~3 GB of dependencies: the layer that installs them may see nothing but
pyproject.toml, requirements.lock and deploy/requirements.py, and the package itself goes in
afterwards with ``--no-deps``. deploy/requirements.py names the requirements, pinned by the lock.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy.requirements import requirements
from tests.deploy.test_configs import _instructions

ROOT = Path(__file__).resolve().parents[2]
# each image and the extra it installs
IMAGES = {"serving.Dockerfile": "serve", "worker.Dockerfile": "flows"}
# what the dependency layer may be built from (a change to anything else must not rebuild it)
DEPENDENCY_INPUTS = {"pyproject.toml", "requirements.lock", "deploy/requirements.py"}


def _copied(rest: str) -> list[str]:
    """The sources of one ``COPY`` (its last word is the destination)."""
    words = [w for w in rest.split() if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_locked_dependencies_are_installed_before_the_source_is_copied(name: str) -> None:
    instructions = _instructions(ROOT / "docker" / name)
    runs = [i for i, (word, rest) in enumerate(instructions) if word == "RUN" and "deploy/requirements.py" in rest]
    assert len(runs) == 1, f"{name}: one RUN installs the dependencies from deploy/requirements.py"
    layer = runs[0]
    command = instructions[layer][1]
    assert re.search(rf"python deploy/requirements\.py {IMAGES[name]} > (\S+)", command), command
    target = re.search(r"> (\S+)", command)
    assert target and re.search(rf"pip install --no-cache-dir -c requirements\.lock -r {target[1]}", command)

    copies = [(i, source) for i, (word, rest) in enumerate(instructions) if word == "COPY" for source in _copied(rest)]
    before = {source for i, source in copies if i < layer}
    assert before == DEPENDENCY_INPUTS, f"{name}: the dependency layer sees {sorted(before)}"
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in found}
    after = {source for i, source in copies if i > layer}
    assert packages <= after and "README.md" in after, sorted(after)

    # the package itself: after the code, without resolving anything again
    own = [
        (i, rest)
        for i, (word, rest) in enumerate(instructions)
        if word == "RUN" and re.search(r"pip install [^&;]*--no-deps (-e )?\.(\s|$)", rest)
    ]
    assert len(own) == 1, f"{name}: one `pip install --no-deps .` of the package"
    assert own[0][0] > max(i for i, _ in copies), f"{name}: the package is installed after the last COPY"
    assert not re.search(r"\.\[[\w,-]+\]", " ".join(rest for _, rest in instructions)), "no `.[extra]` install"


def test_every_copied_path_is_in_the_build_context() -> None:
    """.dockerignore lets through each path a Dockerfile copies (else the build fails)."""
    allowed = {
        line[1:].strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"
    }
    for name in IMAGES:
        for word, rest in _instructions(ROOT / "docker" / name):
            if word == "COPY":
                assert set(_copied(rest)) <= allowed, f"{name}: {rest}"


@pytest.mark.parametrize("extra", sorted(set(IMAGES.values())))
def test_what_the_dependency_layer_installs_is_locked(extra: str) -> None:
    """Every requirement of the image's extra is pinned, at the lock's version."""
    found = requirements(_project(), [extra])
    assert found
    locked = _locked()
    for requirement in found:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[\w,-]+\])?==([\w.+-]+)", requirement)
        assert match, f"not an exact pin: {requirement}"
        name = re.sub(r"[-_.]+", "-", match[1]).lower()
        assert locked.get(name) == match[3], f"{requirement}: the lock has {locked.get(name)}"


def test_requirements_of_the_extras() -> None:
    """The core plus the extra, the project's own extras expanded; serving's without TensorFlow."""
    project = _project()
    core = requirements(project, [])
    assert core == project["dependencies"]
    serve = requirements(project, ["serve"])
    assert serve[: len(core)] == core
    assert any(r.startswith("prometheus-client==") for r in serve), "serving/metrics.py needs it"
    assert not [r for r in serve if re.match(r"(tensorflow|keras|tf2onnx|jax|prefect)", r)], serve
    flows = requirements(project, ["flows"])
    assert any(r.startswith("tensorflow-cpu==") for r in flows), "flows = aidetect[train] + ..."
    assert not [r for r in flows if r.startswith("aidetect")]
    assert len(flows) == len(set(flows))


def test_an_unknown_extra_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "requirements.py"), "serving"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and not result.stdout
    assert "aidetect has no extra 'serving'" in result.stderr and "serve" in result.stderr
