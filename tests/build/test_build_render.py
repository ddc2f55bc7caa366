"""Rendering the appliance-specific delta into build/generated/, and the static config around it."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kruxos_build import description, render
from kruxos_build.errors import BuildError
from kruxos_build.paths import Layout

from .build_support import OPERATOR_KEY, ROOT


def _render(layout: Layout, data: dict[str, Any]) -> Path:
    d = description.parse(data, "test.yaml")
    return render.render(d, Path("test.yaml"), layout).generated


def _mkosi_conf(generated: Path) -> configparser.ConfigParser:
    return _ini(generated / "mkosi.conf")


PROFILES = ROOT / "mkosi.profiles"
SERIAL_AUTOLOGIN = Path("mkosi.extra/usr/lib/systemd/system/serial-getty@ttyS0.service.d/10-autologin.conf")


def _profile_conf(profile: str) -> configparser.ConfigParser:
    return _ini(PROFILES / profile / "mkosi.conf")


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep mkosi's CamelCase keys
    assert parser.read(path), f"{path} is missing"
    return parser


@pytest.fixture
def release(valid: dict[str, Any]) -> dict[str, Any]:
    return {**valid, "profile": "release", "ssh_keys": [OPERATOR_KEY]}


def test_the_drop_in_carries_the_description(layout: Layout, valid: dict[str, Any]) -> None:
    valid.update(version="2.3.4", hostname="edge-7", packages=["vim-tiny", "curl"])
    conf = _mkosi_conf(_render(layout, valid))
    assert conf["Distribution"]["Release"] == "trixie"
    assert conf["Distribution"]["Mirror"] == "http://deb.debian.org/debian"  # mkosi's cache key
    assert conf["Output"]["ImageVersion"] == "2.3.4"
    assert conf["Output"]["CacheDirectory"] == str(layout.cache)
    assert conf["Content"]["Hostname"] == "edge-7"
    assert conf["Content"]["Packages"].split() == ["curl", "vim-tiny"]


def test_apt_sources_are_main_updates_and_security_from_the_mirrors_only(
    layout: Layout, valid: dict[str, Any]
) -> None:
    valid["debian"]["mirror"] = "http://mirror.example/debian"
    sources = (_render(layout, valid) / "pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert "URIs: http://mirror.example/debian\nSuites: trixie trixie-updates\n" in sources
    assert "URIs: http://deb.debian.org/debian-security\nSuites: trixie-security\n" in sources
    assert "debug" not in sources


def test_gateway_config_has_the_port_workspace_and_unprivileged_process_user(
    layout: Layout, valid: dict[str, Any]
) -> None:
    valid.update(gateway={"port": 8800}, workspace="/srv/agents")
    config = yaml.safe_load((_render(layout, valid) / "extra/etc/kruxos/gateway.yaml").read_text())
    assert config["listen"] == {"host": "0.0.0.0", "port": 8800}
    assert config["workspace"] == {"root": "/srv/agents"}
    assert config["process"]["run_as_user"] == "kruxos-agent"


def test_gateway_config_is_accepted_by_the_gateways_own_schema(
    layout: Layout, valid: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "gateway"))
    config = pytest.importorskip("kruxos_gateway.config", reason="the gateway package is not importable here")
    text = (_render(layout, valid) / "extra/etc/kruxos/gateway.yaml").read_text()
    assert config.parse_config(text, "gateway.yaml").listen.port == 7700


def test_the_sdk_host_and_the_workspace_follow_the_description(layout: Layout, valid: dict[str, Any]) -> None:
    valid.update(gateway={"port": 8800}, workspace="/srv/agents")
    generated = _render(layout, valid)
    assert (generated / "extra/etc/kruxos/sdk.env").read_text().splitlines()[
        -1
    ] == "KRUXOS_HOST=localhost:8800"
    assert (
        "d /srv/agents 2770 kruxos kruxos-workspace -"
        in (generated / "extra/usr/lib/tmpfiles.d/kruxos.conf").read_text()
    )
    assert (
        "ReadWritePaths=/srv/agents"
        in (generated / "extra/usr/lib/systemd/system/kruxos-gateway.service.d/10-appliance.conf").read_text()
    )


def test_dev_profile_allows_console_autologin_and_the_build_keys(
    layout: Layout, valid: dict[str, Any]
) -> None:
    generated = _render(layout, valid)
    # Static, in the dev profile (build.py passes --profile=dev), not rendered.
    dev = _profile_conf("dev")
    assert dev["Content"]["Autologin"] == "yes"
    assert dev["Content"]["Environment"] == "KRUXOS_PROFILE=dev"
    assert "--autologin root" in (PROFILES / "dev" / SERIAL_AUTOLOGIN).read_text()
    assert "Autologin" not in _mkosi_conf(generated)["Content"]  # the drop-in holds only the appliance's part
    keys = (generated / "extra/root/.ssh/authorized_keys").read_text().splitlines()
    assert keys == [
        layout.ssh_key.with_suffix(".pub").read_text().strip(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostUserKey user@host",
    ]


def test_release_profile_has_no_autologin_and_only_operator_keys(
    layout: Layout, release: dict[str, Any]
) -> None:
    generated = _render(layout, release)
    for content in (_mkosi_conf(generated)["Content"], _profile_conf("release")["Content"]):
        assert "Autologin" not in content
        assert "RootPassword" not in content
    # mkosi.postinst.chroot locks root
    assert _profile_conf("release")["Content"]["Environment"] == "KRUXOS_PROFILE=release"
    assert not (PROFILES / "release" / SERIAL_AUTOLOGIN).exists()
    assert not (generated / "extra" / SERIAL_AUTOLOGIN.relative_to("mkosi.extra")).parent.exists()
    assert (generated / "extra/root/.ssh/authorized_keys").read_text() == OPERATOR_KEY + "\n"
    assert not layout.ssh_key.exists()


def test_private_files_and_directories_get_private_modes(layout: Layout, valid: dict[str, Any]) -> None:
    extra = _render(layout, valid) / "extra"
    assert (extra / "root").stat().st_mode & 0o777 == 0o700
    assert (extra / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert (extra / "root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    assert (extra / "usr/bin/kruxosctl").stat().st_mode & 0o777 == 0o755
    assert (extra / "etc").stat().st_mode & 0o777 == 0o755


@pytest.mark.skipif(not (ROOT / "sdk/python/kruxos/__init__.py").exists(), reason="no SDK sources yet")
def test_the_sdk_is_staged_without_bytecode_and_readable_by_all(
    layout: Layout, valid: dict[str, Any]
) -> None:
    sdk = _render(layout, valid) / "extra/opt/kruxos/sdk/python/kruxos"
    assert (sdk / "__init__.py").stat().st_mode & 0o777 == 0o644
    assert not list(sdk.rglob("__pycache__"))
    assert not list(sdk.rglob("*.pyc"))


def test_kruxosctl_runs_the_gateways_declared_entry_point(layout: Layout, valid: dict[str, Any]) -> None:
    wrapper = (_render(layout, valid) / "extra/usr/bin/kruxosctl").read_text()
    module, func = render.kruxosctl_entry(layout.root).split(":")
    assert f"from {module} import {func}" in wrapper
    assert wrapper.startswith("#!/bin/sh\n")


@pytest.mark.parametrize(
    "scripts",
    [
        pytest.param("", id="no-scripts-table"),
        pytest.param('[project.scripts]\nkruxosctl = "kruxos_gateway.ctl"\n', id="no-function"),
    ],
)
def test_a_gateway_package_without_a_kruxosctl_entry_point_is_a_one_line_error(
    tmp_path: Path, scripts: str
) -> None:
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "pyproject.toml").write_text(f'[project]\nname = "kruxos-gateway"\n{scripts}')
    with pytest.raises(BuildError, match=r"pyproject.toml declares no kruxosctl console script") as raised:
        render.kruxosctl_entry(tmp_path)
    assert raised.value.hint == 'add [project.scripts] kruxosctl = "kruxos_gateway.ctl:main"'


def test_an_undefined_template_variable_is_a_one_line_error(
    layout: Layout, valid: dict[str, Any], tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay"
    shutil.copytree(ROOT / "overlay", overlay)
    (overlay / "extra/etc/oops.conf.j2").write_text("value={{ d.no_such_field }}\n")
    (layout.root / "overlay").unlink()
    (layout.root / "overlay").symlink_to(overlay)
    with pytest.raises(BuildError, match=r"^overlay/extra/etc/oops.conf.j2: .*no_such_field"):
        _render(layout, valid)


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_profile_script_adds_the_sdk_once_and_is_safe_under_set_u(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    script = ROOT / "profile.d/kruxos-sdk.sh"
    out = subprocess.run(
        [
            shell,
            "-uc",
            f'unset PYTHONPATH KRUXOS_HOST; . {script}; . {script}; echo "$PYTHONPATH"; '
            f'PYTHONPATH=/x; . {script}; . {script}; echo "$PYTHONPATH"',
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    assert out == ["/opt/kruxos/sdk/python", "/opt/kruxos/sdk/python:/x"]


def test_every_preset_line_says_why() -> None:
    lines = (ROOT / "mkosi.extra/usr/lib/systemd/system-preset/10-kruxos.preset").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("enable ", "disable ")):
            assert lines[i - 1].startswith("# "), f"no reason above {line!r}"


def test_every_shipped_unit_is_named_by_the_preset() -> None:
    preset = (ROOT / "mkosi.extra/usr/lib/systemd/system-preset/10-kruxos.preset").read_text()
    for unit in (ROOT / "mkosi.extra/usr/lib/systemd/system").glob("*.service"):
        assert re.search(rf"^(enable|disable) {re.escape(unit.name)}$", preset, re.M), unit.name


def test_nothing_runs_systemctl_enable() -> None:
    owned = [
        ROOT / "mkosi.conf",
        ROOT / "mkosi.postinst.chroot",
        *(ROOT / "mkosi.extra").rglob("*"),
        *(ROOT / "overlay").rglob("*"),
        *(ROOT / "kruxos_build").glob("*.py"),
    ]
    for path in owned:
        if path.is_file():
            assert "systemctl enable" not in "\n".join(
                line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
            ), path


def test_every_masked_unit_and_generator_is_explained_in_the_image_doc() -> None:
    doc = (ROOT / "docs/image.md").read_text()
    masked = [
        path
        for path in (ROOT / "mkosi.extra/etc/systemd").rglob("*")
        if path.is_symlink() and str(path.readlink()) == "/dev/null"
    ]
    assert masked
    for path in masked:
        assert f"`{path.parent.name}/{path.name}`" in doc, (
            f"{path.name} is masked without a reason in docs/image.md"
        )
