"""deploy/audit.py: the accepted-vulnerabilities file, and what `make audit` and Trivy are given.

The audit itself needs the package index's vulnerability data and is not run here (a new
advisory must not turn an unchanged commit red); these tests check its inputs.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))
import audit  # noqa: E402

TODAY = dt.date(2026, 12, 2)


def test_the_accepted_file_parses_and_every_entry_says_why() -> None:
    entries = audit.parse(audit.ACCEPTED.read_text())
    for entry in entries:
        assert len(entry.reason.split()) >= 3, f"{entry.id}: give a reason a reviewer can check"


def test_entries_are_read_with_their_review_date_and_reason() -> None:
    text = """
    # a comment
    GHSA-abcd-1234-wxyz Jinja2 2027-01-31 only the sandbox is affected; we never render user templates
    PYSEC-2024-12  urllib3 2026-11-30 no fixed release yet  # trailing comment
    """
    entries = audit.parse(text)
    assert [(e.id, e.package, e.review_by) for e in entries] == [
        ("GHSA-abcd-1234-wxyz", "jinja2", dt.date(2027, 1, 31)),
        ("PYSEC-2024-12", "urllib3", dt.date(2026, 11, 30)),
    ]
    assert entries[0].reason == "only the sandbox is affected; we never render user templates"
    assert [e.id for e in audit.overdue(entries, TODAY)] == ["PYSEC-2024-12"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("CVE-2024-1234 pkg 2027-01-01", "want '<id> <package> <review-by YYYY-MM-DD> <reason>'"),
        ("XSA-1 pkg 2027-01-01 because", "not a PYSEC-, GHSA- or CVE- id"),
        ("CVE-2024-1234 pkg 31.01.2027 because it is so", "is not a date"),
        ("CVE-2024-1234 a 2027-01-01 x\nCVE-2024-1234 b 2027-01-01 y", "listed more than once: CVE-2024-1234"),
    ],
)
def test_a_bad_entry_is_refused_with_its_line(line: str, message: str) -> None:
    with pytest.raises(audit.BadEntry, match=re.escape(message)):
        audit.parse(line)


def test_pip_audit_is_strict_and_ignores_exactly_the_accepted_ids() -> None:
    entries = audit.parse("CVE-2024-1234 a 2027-01-01 one two three\nGHSA-aaaa-bbbb-cccc b 2027-01-01 four five six")
    command = audit.pip_audit_command(entries, "pip-audit")
    # without --strict, pip-audit says "No known vulnerabilities found" for packages it could not look up
    assert "--strict" in command and "--disable-pip" in command
    assert command[command.index("-r") + 1] == str(ROOT / "requirements.lock")
    ignored = [command[i + 1] for i, arg in enumerate(command) if arg == "--ignore-vuln"]
    assert ignored == ["CVE-2024-1234", "GHSA-aaaa-bbbb-cccc"]


def test_the_trivy_ignore_file_is_generated_from_the_same_list() -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "deploy" / "audit.py"), "trivyignore"], capture_output=True, text=True, check=True
    )
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    expected = [f"{e.id} exp:{e.review_by}" for e in audit.parse(audit.ACCEPTED.read_text())]
    assert lines == expected


def test_the_command_refuses_an_unknown_verb() -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "deploy" / "audit.py"), "scan"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "usage: python3 deploy/audit.py" in result.stderr


def test_make_audit_runs_the_script_and_make_test_does_not() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^audit:\n\t\$\(PYTHON\) deploy/audit.py$", makefile, re.M)
    test_target = re.search(r"^test: (.*)$", makefile, re.M)
    assert test_target is not None and "audit" not in test_target.group(1)
