"""The version of this code: the package version, plus the git commit when run from a checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    git = shutil.which("git")
    if git is None:
        return __version__
    try:
        commit = subprocess.run(  # noqa: S603 - fixed arguments, git found on PATH
            [git, "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
