"""code_version(), what every model card records: AIDETECT_BUILD, else git (a checkout), else the package version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aidetect.version import __version__

ROOT = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def _code_version(package_root: Path, path: str | None = None, **env: str) -> str:
    """code_version() of the ``aidetect`` package under ``package_root``, in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIDETECT_", "GIT_"))}
    if path is not None:
        clean["PATH"] = path
    result = subprocess.run(
        [sys.executable, "-c", "import aidetect.version as v; print(v.__file__); print(v.code_version())"],
        env={**clean, "PYTHONPATH": str(package_root), **env},
        cwd=package_root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    where, version = result.stdout.split()
    assert Path(where).is_relative_to(package_root), where  # the copy under test, not the installed package
    return version


def _copy_package(dest: Path) -> Path:
    shutil.copytree(ROOT / "aidetect", dest / "aidetect", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _git(cwd: Path, *args: str) -> str:
    assert GIT is not None
    command = [GIT, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_aidetect_build_comes_first(tmp_path: Path) -> None:
    """An image's sha (AIDETECT_BUILD), even where git would answer too (this checkout) or could not (a copy)."""
    assert _code_version(ROOT, AIDETECT_BUILD="3f2a9c1") == f"{__version__}+3f2a9c1"
    assert _code_version(_copy_package(tmp_path), AIDETECT_BUILD="3f2a9c1") == f"{__version__}+3f2a9c1"


@needs_git
def test_git_commit_in_a_checkout(tmp_path: Path) -> None:
    repo = _copy_package(tmp_path / "repo")
    _git(repo, "init", "--quiet")
    _git(repo, "add", "aidetect")
    _git(repo, "commit", "--quiet", "-m", "the code")
    sha = _git(repo, "rev-parse", "--short", "HEAD")
    assert _code_version(repo) == f"{__version__}+{sha}"
    # "dev", the images' default when no sha is passed, names no build: git still answers
    assert _code_version(repo, AIDETECT_BUILD="dev") == f"{__version__}+{sha}"


@needs_git
def test_a_work_tree_that_does_not_track_the_code_is_not_its_version(tmp_path: Path) -> None:
    """A package installed inside some other repository (a venv in a user's project) is not that repo's commit."""
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    (repo / "notes.txt").write_text("not aidetect\n")
    _git(repo, "add", "notes.txt")
    _git(repo, "commit", "--quiet", "-m", "unrelated")
    site = _copy_package(repo / "venv" / "site-packages")
    assert _code_version(site) == __version__


def test_package_version_without_git(tmp_path: Path) -> None:
    """An installed package in an image: no work tree, or no git at all, and no AIDETECT_BUILD."""
    copy = _copy_package(tmp_path)
    if GIT is not None:
        inside = subprocess.run([GIT, "rev-parse", "--is-inside-work-tree"], cwd=copy, capture_output=True, check=False)
        assert inside.returncode != 0, f"{tmp_path} is inside a git work tree: the test needs one outside"
        assert _code_version(copy) == __version__
    assert _code_version(ROOT, path=str(tmp_path / "no-bin")) == __version__  # this checkout, git not on PATH
