"""The figures the reliability tests measure, recorded as they run and rendered for docs/RELIABILITY.md.

A test asks for the ``figures`` fixture and calls it once its checks have passed
(``figures(recovered_s=6.4)``): the values land in ``test-artifacts/reliability/<test>.json``.
``make reliability-report`` clears that folder, runs ``tests/reliability`` with a JUnit report
beside them, and renders the table (``python -m tests.reliability.figures``) into
``test-artifacts/reliability.md``: the figures of the tests that passed, the suite's time, the
machine, the date.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import ARTIFACTS

FOLDER = ARTIFACTS / "reliability"
JUNIT = FOLDER / "junit.xml"
REPORT = ARTIFACTS / "reliability.md"
COMMAND = "make reliability-report"

Value = float | int | str
#: The ``figures`` fixture: ``figures(name=value, ...)`` records this test's measured figures.
Figures = Callable[..., None]


def record(test: str, figures: dict[str, Value], folder: Path = FOLDER) -> Path:
    """Add ``figures`` to the record of ``test`` (its pytest node id); returns the file written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (test.replace("/", "_").replace("::", "__") + ".json")
    old = json.loads(path.read_text())["figures"] if path.exists() else {}
    path.write_text(json.dumps({"test": test, "figures": old | figures}, indent=1))
    print(" ".join(f"{name}={value}" for name, value in figures.items()))  # also in the test's output
    return path


def _format(value: Value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def suite_line(junit: Path) -> str:
    """``N tests: P passed, F failed, S skipped in T s`` from the JUnit report, if there is one."""
    if not junit.exists():
        return "no JUnit report (the suite was not run by `make reliability-report`)"
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    seconds = float(suite.get("time", 0.0))
    return f"{total} tests: {total - failed - skipped} passed, {failed} failed, {skipped} skipped in {seconds:.0f} s"


def render(folder: Path = FOLDER, junit: Path = JUNIT) -> str:
    """The markdown report: one row per recorded figure, test by test."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []
    cores = os.cpu_count()
    lines = [
        "# Reliability figures",
        "",
        f"Command: `{COMMAND}`. Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {cores} CPU cores, "
        f"{platform.machine()}, Python {platform.python_version()}; load average (1 min) {os.getloadavg()[0]:.1f} "
        "at the end.",
        "",
        f"Suite: {suite_line(junit)}.",
        "",
        "| test | figure | value |",
        "|---|---|---|",
    ]
    for rec in records:
        for name, value in rec["figures"].items():
            lines.append(f"| `{rec['test'].split('/')[-1]}` | {name} | {_format(value)} |")
    if not records:
        lines.append("| (none recorded) | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = render()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    sys.stdout.write(text)
    print(f"written {REPORT}", file=sys.stderr)


if __name__ == "__main__":
    main()
