"""README's `openai` example is the one docs/CLIENTS.md holds, which tests/e2e/test_clients.py runs."""

from __future__ import annotations

import re

from tests.conftest import ROOT

BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_the_readmes_openai_example_is_the_tested_one() -> None:
    readme = [b for b in BLOCK.findall((ROOT / "README.md").read_text()) if "from openai import OpenAI" in b]
    tested = BLOCK.findall((ROOT / "docs" / "CLIENTS.md").read_text())
    assert len(readme) == 1
    assert readme[0] in tested
