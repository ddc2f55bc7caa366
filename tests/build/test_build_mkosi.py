"""mkosi accepts the static config merged with the generated drop-in (`mkosi summary`, no build)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kruxos_build import description, mkosi, render
from kruxos_build.paths import Layout

from .build_support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("mkosi") is None, reason="mkosi is not installed on this host")


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """A copy of the files mkosi reads, so the real build/generated is left alone."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in (
        "mkosi.conf",
        "mkosi.conf.d",
        "mkosi.extra",
        "mkosi.images",
        "mkosi.profiles",
        "mkosi.repart",
        "mkosi.prepare.chroot",
        "mkosi.postinst.chroot",
    ):
        (root / name).symlink_to(ROOT / name)
    for name in ("overlay", "profile.d", "sdk", "gateway"):
        (root / name).symlink_to(ROOT / name)
    monkeypatch.setenv("KRUXOS_BUILD_CACHE", str(tmp_path / "cache"))
    return Layout(root=root)


@pytest.mark.parametrize("profile", ["dev", "release"])
def test_mkosi_summary_accepts_the_generated_config(clone: Layout, profile: str) -> None:
    d = description.load(ROOT / "appliance.yaml").model_copy(
        update={"profile": profile, "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperator op@example"]}
    )
    render.render(d, ROOT / "appliance.yaml", clone)
    summary = mkosi.summary(clone, profile)
    assert "Release: trixie" in summary
    assert f"{clone.generated}/extra" in summary  # the generated drop-in was included
    assert f"KRUXOS_PROFILE={profile}" in summary
    assert "Incremental: yes" in summary
    # Our own initrd is built first, as a subimage, and goes into the UKI instead of mkosi's default one.
    assert summary.index("IMAGE: initrd") < summary.index("IMAGE: default")
    assert f"Initrds: {clone.mkosi_out}/initrd.cpio.zst" in summary


@pytest.mark.parametrize(
    ("log", "reused"),
    [
        pytest.param("‣  Copying cached trees\n‣  Copying in extra file trees…\n", True, id="cache-reused"),
        pytest.param(
            "‣ Cache manifest mismatch, not reusing cached images\n‣  Installing Debian\n",
            False,
            id="cache-stale",
        ),
        pytest.param(
            "‣ /var/cache/x.cache does not exist, not reusing cached images\n", False, id="no-cache"
        ),
    ],
)
def test_the_build_says_whether_it_reused_the_cache(tmp_path: Path, log: str, reused: bool) -> None:
    path = tmp_path / "mkosi.log"
    path.write_text(log)
    assert mkosi.reused_cache(path) is reused


SUMMARY = """IMAGE: initrd
    CONFIG:
                            Packages: systemd
                                Seed: {seed}
IMAGE: default
                            Packages: {main}
"""


def test_the_initrd_key_follows_the_initrds_configuration_only(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    (tmp_path / "mkosi.images/initrd").mkdir(parents=True)
    (tmp_path / "mkosi.images/initrd/mkosi.conf").write_text("[Content]\nPackages=systemd\n")
    key = mkosi.initrd_key(layout, SUMMARY.format(seed="1", main="python3"))
    # The main image's settings and repart's random seed are not what the initrd is made from.
    assert mkosi.initrd_key(layout, SUMMARY.format(seed="2", main="python3 jq")) == key
    assert (
        mkosi.initrd_key(layout, SUMMARY.replace("systemd", "systemd udev").format(seed="1", main="x")) != key
    )
    (tmp_path / "mkosi.images/initrd/mkosi.conf").write_text("[Content]\nPackages=systemd kmod\n")
    assert mkosi.initrd_key(layout, SUMMARY.format(seed="1", main="python3")) != key


def test_the_last_initrd_is_reused_only_if_it_exists_with_the_same_key(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    layout.mkosi_out.mkdir(parents=True)
    stamp = layout.mkosi_out / f"{mkosi.INITRD_OUTPUT}.key"
    stamp.write_text("abc\n")
    assert not mkosi.initrd_up_to_date(layout, "abc")  # no initrd
    (layout.mkosi_out / mkosi.INITRD_OUTPUT).write_bytes(b"cpio")
    assert mkosi.initrd_up_to_date(layout, "abc")
    assert not mkosi.initrd_up_to_date(layout, "def")
