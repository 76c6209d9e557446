"""The packages form layers, and no import runs upward (module-level or inside a function).

aidetect (settings, version) < storage < model < feedback < serving, flows < cli. serving and
flows are side by side: neither imports the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the project packages it may import
ALLOWED = {
    "aidetect": set(),
    "storage": {"aidetect"},
    "model": {"aidetect", "storage"},
    "feedback": {"aidetect", "storage", "model"},
    "serving": {"aidetect", "storage", "model", "feedback"},
    "flows": {"aidetect", "storage", "model", "feedback"},
    "cli": {"aidetect", "storage", "model", "feedback", "serving", "flows"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_runs_upward(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) - ALLOWED[package] - {package})
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_the_ground_imports_nothing_of_the_project() -> None:
    code = (
        "import sys, aidetect, aidetect.settings, aidetect.version\n"
        "aidetect.settings.get_settings()\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(ALLOWED) - {'aidetect'}!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
