"""The examples in docs/sdk.md and sdk/python/README.md are valid Python."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "docs" / "sdk.md", REPO / "sdk" / "python" / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

EXAMPLES = [
    pytest.param(block, id=f"{path.name}-{number}")
    for path in DOCS
    for number, block in enumerate(BLOCK.findall(path.read_text(encoding="utf-8")), start=1)
]


@pytest.mark.parametrize("code", EXAMPLES)
def test_the_example_compiles(code: str) -> None:
    compile(code, "example", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("code", EXAMPLES)
def test_the_example_uses_only_public_names(code: str) -> None:
    assert not re.search(r"kruxos\._|from kruxos\._", code)
