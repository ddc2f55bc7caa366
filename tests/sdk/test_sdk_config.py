"""Where to connect and with which key: arguments, environment, systemd credential."""

from __future__ import annotations

from pathlib import Path

import pytest
from kruxos import ConfigurationError, KruxOS
from kruxos._config import resolve_api_key, resolve_url, validate_api_key

KEY = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("address", "url"),
    [
        pytest.param("localhost:7700", "ws://localhost:7700/v1/supervision", id="host-port"),
        pytest.param("localhost", "ws://localhost:7700/v1/supervision", id="host-default-port"),
        pytest.param("10.0.0.5:8000", "ws://10.0.0.5:8000/v1/supervision", id="ipv4"),
        pytest.param("[::1]:7701", "ws://[::1]:7701/v1/supervision", id="ipv6-bracketed"),
        pytest.param("::1", "ws://[::1]:7700/v1/supervision", id="ipv6-bare"),
        pytest.param("ws://gw:7700", "ws://gw:7700/v1/supervision", id="ws-url-no-path"),
        pytest.param("ws://gw:7700/", "ws://gw:7700/", id="ws-url-root-path-kept"),
        pytest.param(
            "wss://gw.example/kx/v1/supervision", "wss://gw.example:7700/kx/v1/supervision", id="wss"
        ),
        pytest.param("  localhost:7700\n", "ws://localhost:7700/v1/supervision", id="whitespace"),
    ],
)
def test_addresses_become_websocket_urls(address: str, url: str) -> None:
    assert resolve_url(address, {}) == url


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("http://localhost:7700", "use 'ws://' or 'wss://'", id="http-scheme"),
        pytest.param("localhost:port", "not a valid gateway address", id="bad-port"),
        pytest.param("localhost:99999", "not a valid gateway address", id="port-out-of-range"),
        pytest.param("ws://user:pw@localhost", "must not carry credentials", id="userinfo"),
        pytest.param("ws://:7700", "names no host", id="no-host"),
    ],
)
def test_bad_addresses_are_configuration_errors(address: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        resolve_url(address, {})


def test_the_host_comes_from_kruxos_host_when_not_passed() -> None:
    assert resolve_url(None, {"KRUXOS_HOST": "gw:7000"}) == "ws://gw:7000/v1/supervision"


def test_an_explicit_host_wins_over_kruxos_host() -> None:
    assert resolve_url("a:1", {"KRUXOS_HOST": "b:2"}) == "ws://a:1/v1/supervision"


def test_no_host_anywhere_names_the_argument_and_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"host=.*KRUXOS_HOST"):
        resolve_url(None, {})


def test_the_key_argument_wins_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "kruxos-api-key").write_text("f" * 64)
    env = {"KRUXOS_API_KEY": "e" * 64, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve_api_key(KEY, env) == KEY


def test_kruxos_api_key_wins_over_the_credential_file(tmp_path: Path) -> None:
    (tmp_path / "kruxos-api-key").write_text("f" * 64)
    assert resolve_api_key(None, {"KRUXOS_API_KEY": KEY, "CREDENTIALS_DIRECTORY": str(tmp_path)}) == KEY


def test_the_systemd_credential_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "kruxos-api-key").write_text(f"{KEY}\n")
    assert resolve_api_key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == KEY


def test_a_credential_directory_without_the_key_file_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no API key"):
        resolve_api_key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_an_unreadable_credential_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "kruxos-api-key").mkdir()  # reading a directory fails like an unreadable file
    with pytest.raises(ConfigurationError, match="kruxos-api-key"):
        resolve_api_key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_no_key_anywhere_names_every_way_to_pass_one() -> None:
    with pytest.raises(ConfigurationError, match=r"api_key=.*KRUXOS_API_KEY.*kruxos-api-key"):
        resolve_api_key(None, {})


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        pytest.param("<64-char hex>", "13 characters long", id="placeholder"),
        pytest.param(KEY[:-1], "63 characters long", id="too-short"),
        pytest.param(KEY.upper(), "uppercase", id="uppercase"),
        pytest.param("g" * 64, "not hexadecimal", id="not-hex"),
    ],
)
def test_a_malformed_key_is_refused_without_echoing_it(key: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        validate_api_key(key)
    assert key not in str(caught.value)


def test_a_malformed_key_names_where_it_came_from() -> None:
    with pytest.raises(ConfigurationError, match=r"^KRUXOS_API_KEY is not a KruxOS API key"):
        resolve_api_key(None, {"KRUXOS_API_KEY": "nope"})


def test_connect_async_resolves_the_configuration_before_any_io(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="KRUXOS_HOST"):
        KruxOS.connect_async(api_key=KEY)


def test_connect_reads_the_real_environment_by_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KRUXOS_HOST", "localhost:7700")
    with pytest.raises(ConfigurationError, match="KRUXOS_API_KEY"):
        KruxOS.connect()
