"""Helpers shared by the flows."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aidetect import __version__
from aidetect.settings import get_settings
from storage import ObjectStore


def store_for(store_url: str | None) -> ObjectStore:
    """The object store named by a flow parameter, or the configured one."""
    return get_settings().open_store(store_url)


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
