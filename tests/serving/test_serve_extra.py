"""``pip install "aidetect[serve]"`` is enough to run ``aidetect serve``.

A fresh virtual environment (no system site packages) gets exactly the distributions that
``aidetect[serve]`` needs, the closure of its requirements (pyproject.toml's, read by
deploy/requirements.py as the serving image does, then each distribution's own metadata and
markers), linked from this environment's installed files, and aidetect itself from a wheel built
here, ``--no-deps``. No network: nothing is downloaded. Then ``aidetect serve`` must answer.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy.requirements import requirements
from storage import LocalStore
from tests.helpers import free_port, image_bytes

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRA = "serve"


def _installed() -> dict[str, md.Distribution]:
    """This environment's distributions by normalised name (the first on sys.path wins, as imports do)."""
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


def closure(top: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions that ``top`` needs, directly or not, under this interpreter's markers."""
    installed = _installed()
    needed: dict[str, md.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [(Requirement(r), "") for r in top]
    while todo:
        requirement, for_extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": for_extra}):
            continue
        name = canonicalize_name(requirement.name)
        dist = installed.get(name)
        assert dist is not None, f"{requirement} is needed but not installed here (make install)"
        assert requirement.specifier.contains(dist.version, prereleases=True), f"{requirement}: {dist.version} here"
        wanted = {""} | set(requirement.extras)
        new = wanted - extras_seen.setdefault(name, set())
        if not new:
            continue
        extras_seen[name] |= new
        needed[name] = dist
        todo += [(Requirement(r), extra) for r in dist.requires or [] for extra in sorted(new)]
    return needed


def _link_into(site: Path, dists: dict[str, md.Distribution]) -> int:
    """Each distribution's installed files (its RECORD) linked into ``site``; how many links.

    A folder holding only the distribution's files is linked whole (symlinks are slow to make on
    some file systems: thousands of them took 16 s); one shared with another distribution (a
    namespace such as ``google/``) is made, and its parts linked, down to what is the distribution's alone.
    """
    linked = 0
    for dist in dists.values():
        files = [f for f in dist.files or [] if f.parts[0] != ".." and not f.is_absolute()]  # not bin/ scripts
        owned = {Path(str(dist.locate_file(f))) for f in files}
        owned = {path for path in owned if path.is_file() and "__pycache__" not in path.parts}
        owned_dirs = {parent for path in owned for parent in path.parents}

        def link(source: Path, target: Path, owned: set[Path] = owned, owned_dirs: set[Path] = owned_dirs) -> int:
            if target.is_symlink():
                return 0
            if source.is_dir():
                inside = (p for p in source.rglob("*") if not p.is_dir() and "__pycache__" not in p.parts)
                if not target.exists() and all(p in owned for p in inside):
                    target.symlink_to(source, target_is_directory=True)
                    return 1
                target.mkdir(exist_ok=True)
                children = [c for c in source.iterdir() if c in owned or c in owned_dirs]
                return sum(link(child, target / child.name) for child in children)
            if target.exists():
                return 0
            target.symlink_to(source)
            return 1

        root = Path(str(dist.locate_file("")))
        for top in sorted({f.parts[0] for f in files}):
            if root / top in owned or root / top in owned_dirs:
                linked += link(root / top, site / top)
    return linked


def _wheel(tmp: Path) -> Path:
    """aidetect's wheel, built from a copy of the source (the shared tree stays clean), offline."""
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheel = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet", "--no-deps"]
    subprocess.run(
        [*wheel, "--no-index", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = (tmp / "dist").glob("aidetect-*.whl")
    return built


def _fresh_venv(tmp: Path, dists: dict[str, md.Distribution]) -> Path:
    """A venv with only ``dists`` and aidetect (``--no-deps``) in it; its bin/ folder."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    assert _link_into(site, dists) > 0
    install = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install"]
    subprocess.run(
        [*install, "--quiet", "--no-deps", "--no-index", "--no-compile", str(_wheel(tmp))],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv / "bin"


def _python(python: Path, code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``code`` in the fresh venv, from a folder of its own (``-c`` puts the working folder on sys.path)."""
    cwd = python.parents[2]
    return subprocess.run([str(python), "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"aidetect serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"aidetect serve was not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def test_the_serve_extra_alone_serves(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    store, version = mean_store
    dists = closure(requirements(PROJECT["project"], [EXTRA]))
    # the closure is the serving stack and no more: no training stack, no Prefect
    assert {"fastapi", "uvicorn", "onnxruntime", "numpy"} <= set(dists)
    assert not {"tensorflow", "tensorflow-cpu", "keras", "prefect", "jax"} & set(dists), sorted(dists)
    bin_dir = _fresh_venv(tmp_path, dists)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIDETECT_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"AIDETECT_HOME": str(tmp_path / "home"), "AIDETECT_STORE_URL": str(store.root)}
    python = bin_dir / "python"
    where = _python(python, "import serving; print(serving.__file__)", env)
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(bin_dir.parent), where
    for absent in ("prefect", "tensorflow", "pytest"):  # nothing from this environment beyond the closure
        assert _python(python, f"import {absent}", env).returncode != 0, absent

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(bin_dir / "aidetect"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(base, process, log)
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        answer = httpx.post(f"{base}/v1/predict", files={"file": ("x.jpg", image_bytes())}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version and answer.json()["label"] in ("ai", "real")
        assert "aidetect_predictions_total" in httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        process.terminate()
        process.wait(timeout=30)
