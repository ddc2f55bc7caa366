"""The small build.py commands that need no mkosi build."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kruxos_build import build_workspace, cli
from kruxos_build.paths import Layout


@pytest.mark.parametrize(
    ("everything", "kept"), [(False, {"ssh"}), (True, set())], ids=["clean", "clean-all"]
)
def test_clean_removes_the_outputs_and_keeps_the_dev_key_unless_all(
    layout: Layout, everything: bool, kept: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_memory = tmp_path / "shm" / "kruxos-build"
    monkeypatch.setattr(build_workspace, "MEMORY_WORKSPACE", in_memory)
    leftover = in_memory / "mkosi-workspace-interrupted"  # what a killed build leaves in memory
    for directory in (
        layout.generated,
        layout.out,
        layout.mkosi_out,
        layout.ssh_key.parent,
        layout.cache,
        leftover,
    ):
        directory.mkdir(parents=True)
        (directory / "file").write_text("x")
    (layout.build / "mkosi.log").write_text("log")
    assert cli.cmd_clean(argparse.Namespace(all=everything), layout, cli.Stages()) == 0
    assert {p.name for p in layout.build.iterdir()} == kept
    assert layout.cache.exists() is not everything
    assert not in_memory.exists()


def test_the_stages_report_each_duration(capsys: pytest.CaptureFixture[str]) -> None:
    stages = cli.Stages()
    with stages("render"):
        pass
    stages.report()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "==> render ..."
    assert out[1].startswith("    render: done in ")
    assert out[2].startswith("==> total ")
