"""The rooms of docs/ARCHITECTURE.md keep to their imports: read from the source, every import, lazy ones too.

- ``common/`` imports neither torch nor any web framework, nor another room;
- ``router/`` imports no torch, diffusers or model library, nor ``worker``/``devhub``;
- ``worker/`` imports no web framework, nor ``router``/``devhub``;
- ``devhub/`` is imported by neither router nor worker (covered by the rules above).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

MODEL_LIBS = {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "tokenizers"}
WEB = {"fastapi", "starlette", "uvicorn"}
FORBIDDEN: dict[str, set[str]] = {
    "common": MODEL_LIBS | WEB | {"router", "worker", "devhub", "lorafarm", "bench"},
    "router": MODEL_LIBS | {"worker", "devhub", "lorafarm", "bench"},
    "worker": WEB | {"router", "devhub", "lorafarm", "bench"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_the_room_imports_only_what_it_may(room: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / room).rglob("*.py"))
        for line, module in imports(path)
        if module in FORBIDDEN[room]
    ]
    assert not found, "\n".join(found)


def test_the_rule_sees_a_lazy_import(tmp_path: Path) -> None:
    """Negative control: an import inside a function counts as much as one at the top."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from router.placement import choose_worker\n    import torch.nn\n")
    assert imports(sample) == [(2, "router"), (3, "torch")]
