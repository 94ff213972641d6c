"""The reliability report renders what the tests recorded, and the suite's outcome from its JUnit file."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.figures import record, render

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="0" tests="30" time="201.5"></testsuite></testsuites>"""


def test_recorded_figures_become_rows_and_the_suite_line_counts_failures(tmp_path: Path) -> None:
    test = "tests/reliability/test_workers.py::test_worker_killed"
    record(test, {"image_after_kill_s": 6.43}, folder=tmp_path)
    record(test, {"drained_s": 4.9}, folder=tmp_path)  # a second call adds to the same record
    (tmp_path / "junit.xml").write_text(JUNIT)
    text = render(tmp_path, tmp_path / "junit.xml")
    assert "| `test_workers.py::test_worker_killed` | image_after_kill_s | 6.43 |" in text
    assert "| drained_s | 4.9 |" in text
    assert "30 tests: 29 passed, 1 failed, 0 skipped in 202 s" in text


def test_nothing_recorded_says_so(tmp_path: Path) -> None:
    text = render(tmp_path / "absent", tmp_path / "absent.xml")
    assert "(none recorded)" in text and "no JUnit report" in text
