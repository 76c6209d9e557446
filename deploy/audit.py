"""Audit the locked dependencies for known vulnerabilities: ``make audit``.

Runs pip-audit (pinned below, in its own venv so it never changes the project's resolution)
on every package of ``requirements.lock`` against the package index's vulnerability data.
``--strict``: a package that could not be audited fails the run, because pip-audit without it
reports "No known vulnerabilities found" for packages it never looked up.

Accepted findings are listed once, in ``deploy/accepted-vulnerabilities.txt``, with a reason
and a review date each; pip-audit here and Trivy in the GitHub workflow both read it
(``python3 deploy/audit.py trivyignore`` writes Trivy's ignore file from it). An entry past its
review date fails the run, so an exception is looked at again rather than kept forever.

    python3 deploy/audit.py            # what `make audit` runs
    python3 deploy/audit.py check      # only parse the exceptions file
    python3 deploy/audit.py trivyignore > .trivyignore

Not part of ``make test``: a new advisory must not turn an unchanged commit red.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = ROOT / "deploy" / "accepted-vulnerabilities.txt"
LOCK = ROOT / "requirements.lock"
TOOL_VENV = ROOT / ".venv-audit"
PIP_AUDIT = "pip-audit==2.10.1"
# pip-audit asks the index for each locked version's JSON, which carries its advisories
PROBE = "https://pypi.org/pypi/pip-audit/2.10.1/json"

# PYSEC-2024-1, GHSA-xxxx-xxxx-xxxx, CVE-2024-12345 (what pip-audit and Trivy report)
_ID = re.compile(r"^(PYSEC-\d{4}-\d+|GHSA(-[0-9a-z]{4}){3}|CVE-\d{4}-\d{4,})$")


class BadEntry(ValueError):
    """A line of the exceptions file that does not say what is accepted, until when and why."""


@dataclass(frozen=True)
class Accepted:
    id: str
    package: str
    review_by: dt.date
    reason: str


def parse(text: str, *, source: str = ACCEPTED.name) -> list[Accepted]:
    """``<id> <package> <review-by YYYY-MM-DD> <reason...>`` per line; ``#`` starts a comment."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 3)
        if len(parts) < 4:
            raise BadEntry(f"{source}:{number}: want '<id> <package> <review-by YYYY-MM-DD> <reason>', got {line!r}")
        vuln, package, date, reason = parts
        if not _ID.match(vuln):
            raise BadEntry(f"{source}:{number}: {vuln!r} is not a PYSEC-, GHSA- or CVE- id")
        try:
            review_by = dt.date.fromisoformat(date)
        except ValueError:
            raise BadEntry(f"{source}:{number}: review-by {date!r} is not a date (YYYY-MM-DD)") from None
        entries.append(Accepted(vuln, package.lower(), review_by, reason))
    ids = [e.id for e in entries]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise BadEntry(f"{source}: listed more than once: {', '.join(duplicated)}")
    return entries


def overdue(entries: list[Accepted], today: dt.date) -> list[Accepted]:
    return [e for e in entries if e.review_by < today]


def pip_audit_command(entries: list[Accepted], executable: str) -> list[str]:
    command = [executable, "-r", str(LOCK), "--no-deps", "--disable-pip", "--strict", "--progress-spinner", "off"]
    for entry in entries:
        command += ["--ignore-vuln", entry.id]
    return command


def reachable(url: str = PROBE) -> str | None:
    """None if the index answers pip-audit's per-version query, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 (a constant https URL)
            json.load(response)
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None


def _tool() -> str:
    executable = TOOL_VENV / "bin" / "pip-audit"
    if not executable.exists():
        print(f"installing {PIP_AUDIT} into {TOOL_VENV.name}/", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(TOOL_VENV)], check=True)  # noqa: S603
        pip = [str(TOOL_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, PIP_AUDIT], check=True)  # noqa: S603
    return str(executable)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "audit"
    if command not in ("audit", "check", "trivyignore"):
        print(f"usage: python3 deploy/audit.py [audit|check|trivyignore] (got {command!r})", file=sys.stderr)
        return 2
    try:
        entries = parse(ACCEPTED.read_text())
    except (OSError, BadEntry) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    if command == "trivyignore":
        print(f"# generated from deploy/{ACCEPTED.name} by deploy/audit.py: edit that file, not this one")
        for entry in entries:
            print(f"{entry.id} exp:{entry.review_by.isoformat()}")
        return 0
    late = overdue(entries, dt.datetime.now(dt.UTC).date())
    for entry in late:
        print(
            f"audit: {entry.id} ({entry.package}) was to be reviewed by {entry.review_by}: {entry.reason}",
            file=sys.stderr,
        )
    if late:
        print(
            f"audit: review the overdue entries of deploy/{ACCEPTED.name} (fix, or renew with a reason)",
            file=sys.stderr,
        )
        return 1
    if command == "check":
        print(f"{len(entries)} accepted finding(s), none overdue")
        return 0
    problem = reachable()
    if problem is not None:  # fail in seconds, saying why, rather than with 150 "not found on PyPI"
        print(
            f"audit: cannot audit from here: {problem} (pip-audit reads /pypi/<name>/<version>/json)", file=sys.stderr
        )
        return 1
    result = subprocess.run(pip_audit_command(entries, _tool()), env=os.environ.copy(), check=False)  # noqa: S603
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
