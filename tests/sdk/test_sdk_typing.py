"""The SDK's public API type-checks strictly from a user's point of view."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is not installed")

HERE = Path(__file__).parent
SDK = HERE.parents[1] / "sdk" / "python"


def test_the_usage_examples_pass_mypy_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYPYPATH", str(SDK))  # an editable install hides the package from mypy
    stdout, stderr, status = api.run(
        ["--strict", "--no-incremental", "--python-version", "3.11", str(HERE / "typing_examples.py")]
    )
    assert status == 0, stdout + stderr
