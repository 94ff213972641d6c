"""README.md and docs/ point only inside the repository, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Targets of markdown links that are not URLs or in-page anchors, without their anchor."""
    return [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text and "/work/shared" not in text, f"{doc.name} points outside the repository"
    for target in relative_links(text):
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} is outside the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_the_link_pattern_sees_relative_links_only() -> None:
    text = "[a](docs/A.md) [b](https://x.test/y) [c](#here) [d](img/p.png#frag) ![e](../shared/X.md)"
    assert relative_links(text) == ["docs/A.md", "img/p.png", "../shared/X.md"]
