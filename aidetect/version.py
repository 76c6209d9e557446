"""The version of this code: the package version, plus the build it came from when that is known."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__version__ = "0.1.0"


def _git_commit() -> str | None:
    """HEAD's short sha when this file is tracked by the git work tree it sits in (a checkout), else None."""
    git = shutil.which("git")
    if git is None:
        return None
    here = Path(__file__).resolve()
    try:
        for command in (["ls-files", "--error-unmatch", here.name], ["rev-parse", "--short", "HEAD"]):
            result = subprocess.run(  # noqa: S603 - fixed arguments, git found on PATH
                [git, *command], cwd=here.parent, capture_output=True, text=True, timeout=5, check=True
            )
    except (OSError, subprocess.SubprocessError):  # not a work tree, or one that does not track this code
        return None
    return result.stdout.strip() or None


def code_version() -> str:
    """``<package version>+<build>``: the build from ``AIDETECT_BUILD`` (an image's git sha), else from git
    (a checkout), else the package version alone (an installed package; an image built without a sha)."""
    from aidetect.settings import Settings, get_settings

    build = get_settings().build.strip()
    if build == Settings.model_fields["build"].default:  # "dev": no build named
        build = _git_commit() or ""
    return f"{__version__}+{build}" if build else __version__
