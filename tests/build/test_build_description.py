"""The appliance description: what is valid, and the one-line error for each kind of mistake."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kruxos_build import cli, description
from kruxos_build.errors import DescriptionError

from .build_support import OPERATOR_KEY, ROOT


def test_the_embedded_default_description_is_valid() -> None:
    d = description.load(ROOT / "appliance.yaml")
    assert (d.debian.release, d.gateway.port, d.workspace, d.profile) == ("trixie", 7700, "/workspace", "dev")


def test_defaults_fill_the_optional_keys() -> None:
    d = description.parse(
        {"name": "kx", "version": "1", "debian": {"release": "trixie"}, "hostname": "kx"}, "t"
    )
    assert d.gateway.port == 7700
    assert d.debian.security_mirror == "http://deb.debian.org/debian-security"
    assert d.profile == "dev"


def test_a_release_description_with_an_operator_key_is_valid(valid: dict[str, Any]) -> None:
    valid.update(profile="release", ssh_keys=[OPERATOR_KEY])
    assert description.parse(valid, "t").ssh_keys == [OPERATOR_KEY]


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()

BAD = [
    pytest.param("colour", "red", "colour: unknown key", id="unknown-top-level-key"),
    pytest.param("gateway.prot", 7700, "gateway.prot: unknown key", id="unknown-nested-key"),
    pytest.param("name", _DELETE, "name: required key is missing", id="missing-key"),
    pytest.param("gateway.port", "7700", "gateway.port: must be a valid integer", id="port-wrong-type"),
    pytest.param(
        "gateway.port", 70000, "gateway.port: must be less than or equal to 65535", id="port-too-big"
    ),
    pytest.param("gateway.port", 0, "gateway.port: must be greater than or equal to 1", id="port-zero"),
    pytest.param("profile", "prod", "profile: must be 'dev' or 'release'", id="unknown-profile"),
    pytest.param("debian.release", "bookworm", "debian.release: must be 'trixie'", id="unsupported-release"),
    pytest.param("debian.mirror", "ftp://x", "debian.mirror: is not valid here", id="mirror-not-http"),
    pytest.param("hostname", "Krux_OS", "hostname: is not valid here", id="bad-hostname"),
    pytest.param("version", "one", "version: is not valid here", id="bad-version"),
    pytest.param("workspace", "workspace", "workspace: must be an absolute path", id="relative-workspace"),
    pytest.param("workspace", "/", "workspace: must be an absolute path", id="root-as-workspace"),
    pytest.param("packages", "vim", "packages: must be a valid list", id="packages-not-a-list"),
    pytest.param("packages", ["Bad Name"], "packages.0: is not valid here", id="bad-package-name"),
    pytest.param("ssh_keys", ["hunter2"], "ssh_keys.0: must be an OpenSSH public key line", id="bad-ssh-key"),
    pytest.param(
        "profile",
        "release",
        "the release profile needs at least one operator key",
        id="release-without-operator-key",
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD)
def test_a_bad_description_is_one_line_naming_the_key(
    valid: dict[str, Any], key: str, value: Any, message: str
) -> None:
    with pytest.raises(DescriptionError) as caught:
        description.parse(_set(valid, key, value), "appliance.yaml")
    assert caught.value.message.startswith(f"appliance.yaml: {message}")
    assert "\n" not in caught.value.message
    assert caught.value.code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("- just\n- a list\n", "must be a YAML mapping", id="not-a-mapping"),
        pytest.param("name: [unclosed\n", "not valid YAML at line", id="invalid-yaml"),
    ],
)
def test_a_description_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(DescriptionError, match=message):
        description.load(path)


def test_the_cli_reports_a_bad_description_in_one_line_and_exits_2_before_mkosi(
    tmp_path: Path, valid: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_set(valid, "gateway.port", 70000)))
    assert cli.main(["build", "--description", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"build.py: error: {path}: gateway.port: must be less than or equal to 65535 (got 70000)"
        "; hint: see appliance.yaml for every key and what it takes",
    ]
    assert "mkosi" not in out  # stopped before any stage that runs mkosi


def test_a_missing_description_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "--description", str(tmp_path / "nope.yaml")]) == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[0]
        .endswith("nope.yaml: cannot read the description: No such file or directory")
    )
