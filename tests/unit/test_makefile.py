"""`make help` lists every target: each rule of the Makefile carries its `## what it does` line."""

from __future__ import annotations

import re

from tests.conftest import ROOT

RULE = re.compile(r"^([a-z][a-z-]*):(?!=)(.*)$", re.M)


def rules() -> dict[str, str]:
    """Target name -> the rest of its rule line (prerequisites and the ``##`` comment)."""
    return {m.group(1): m.group(2) for m in RULE.finditer((ROOT / "Makefile").read_text())}


def test_every_target_has_a_help_line_and_is_phony() -> None:
    found = rules()
    assert {"help", "test", "test-fast", "reliability-report", "run"} <= set(found)
    assert [name for name, rest in found.items() if "## " not in rest] == []
    phony = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert phony is not None
    assert set(found) <= set(phony.group(1).replace("\\\n", " ").split())


def test_the_rule_pattern_sees_a_target_without_help() -> None:
    """Negative control: a rule with no comment is found, and a variable assignment is not a rule."""
    text = "VENV := .venv\nnew-target: setup\n\techo hi\n"
    assert {m.group(1): m.group(2) for m in RULE.finditer(text)} == {"new-target": " setup"}
