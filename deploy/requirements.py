"""The third-party requirements of aidetect with some extras, read from pyproject.toml alone.

The images install these (pinned by requirements.lock) in a layer of their own, before the
source is copied in, so a commit that changes only code reuses that layer; the package itself
follows with ``pip install --no-deps``. Standard library only: it runs before anything is
installed.

    python deploy/requirements.py serve > /tmp/requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def _own_extras(requirement: str) -> list[str]:
    """The extras a self-reference names (``aidetect[serve,flows]`` -> serve, flows)."""
    nested = re.fullmatch(r"[^\[]+\[([\w,\s-]+)\]", requirement)
    return [extra.strip() for extra in nested[1].split(",")] if nested else []


def requirements(project: dict[str, Any], extras: list[str]) -> list[str]:
    """``dependencies`` plus each extra's requirements, the project's own extras (``aidetect[train]``) expanded."""
    own = _name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()
    todo = [*project.get("dependencies", []), *(f"{own}[{extra}]" for extra in extras)]
    while todo:
        requirement = todo.pop(0)
        if _name(requirement) != own:
            if requirement not in out:
                out.append(requirement)
            continue
        for extra in _own_extras(requirement):
            if extra not in optional:
                raise ValueError(f"{project['name']} has no extra {extra!r} (it has: {', '.join(sorted(optional))})")
            if extra not in seen:
                seen.add(extra)
                todo[:0] = optional[extra]  # depth first: an extra's requirements in its own order
    return out


def main(argv: list[str]) -> int:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    try:
        lines = requirements(project, argv)
    except ValueError as exc:
        print(f"deploy/requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
