"""Fast tests of the image builder: no mkosi build, no VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from kruxos_build.paths import Layout

from .build_support import ROOT


@pytest.fixture
def valid() -> dict[str, object]:
    """A valid description as loaded YAML, for tests to break one key at a time."""
    return {
        "name": "kruxos",
        "version": "0.1.0",
        "debian": {"release": "trixie", "mirror": "http://deb.debian.org/debian"},
        "hostname": "kruxos",
        "gateway": {"port": 7700},
        "workspace": "/workspace",
        "profile": "dev",
        "packages": [],
        "ssh_keys": [],
    }


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """The real overlay and sources, but build/ (and the home with ~/.ssh) in a temporary directory."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in ("overlay", "profile.d", "sdk", "gateway"):
        if (ROOT / name).exists():
            (root / name).symlink_to(ROOT / name)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_test.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostUserKey user@host\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KRUXOS_BUILD_CACHE", str(tmp_path / "cache"))
    return Layout(root=root)
