"""Host set-up: missing build tools are installed as root, or named with the one command to run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from kruxos_build import host
from kruxos_build.errors import BuildError


@pytest.fixture
def bookworm_without_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "debian_version", lambda: 12)
    monkeypatch.setattr(host, "missing_packages", lambda **_: (["debian-archive-keyring", "zstd"], ["mkosi"]))
    monkeypatch.setattr(host, "_has_backports", lambda: False)


@pytest.mark.usefixtures("bookworm_without_tools")
def test_without_root_the_error_names_the_one_command_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BuildError) as caught:
        host.ensure()
    assert caught.value.message == "build tools are missing: debian-archive-keyring zstd mkosi"
    assert caught.value.hint == (
        "as root: echo 'deb http://deb.debian.org/debian bookworm-backports main' > "
        "/etc/apt/sources.list.d/bookworm-backports.list && apt-get update && "
        "apt-get install -y --no-install-recommends -t bookworm-backports mkosi && "
        "apt-get install -y --no-install-recommends debian-archive-keyring zstd"
    )


def test_nothing_is_installed_when_nothing_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "debian_version", lambda: 12)
    monkeypatch.setattr(host, "missing_packages", lambda **_: (["debian-archive-keyring"], []))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    assert host.ensure() == []


def test_debian_13_takes_everything_from_main(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "debian_version", lambda: 13)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(host, "_python_has", lambda module: True)
    main, backports = host.missing_packages()
    assert backports == []
    assert "mkosi" in main
    assert "systemd-boot" not in main  # mkosi 25 takes systemd-boot from the image
