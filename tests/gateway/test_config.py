"""The configuration file: every key optional, unknown keys and wrong types refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from kruxos_gateway.config import GatewayConfig, load_config, parse_config
from kruxos_gateway.errors import ConfigError


def test_an_empty_file_means_every_default() -> None:
    config = parse_config("")
    assert config == GatewayConfig()
    assert config.listen.port == 7700
    assert config.listen.host == "0.0.0.0"
    assert config.db_path == Path("/var/lib/kruxos/gateway.db")
    assert config.workspace.root == Path("/workspace")
    assert config.limits.max_message_bytes == 1_048_576
    assert config.process.run_as_user is None
    assert config.network.allow_hosts == []


def test_the_documented_example_parses() -> None:
    config = parse_config(
        """
listen: {host: 127.0.0.1, port: 0}
state_dir: /tmp/state
workspace: {root: /tmp/ws}
limits: {max_message_bytes: 2048, max_in_flight: 4, handshake_timeout: 1.5, idle_timeout: 30,
         drain_timeout: 0}
auth: {failed_handshake_limit: 3, failed_handshake_window: 10}
filesystem: {max_read_bytes: 100, max_write_bytes: 200}
process: {run_as_user: agent, run_as_group: agent, default_timeout: 5, max_timeout: 50, max_output_bytes: 10}
network: {allow_hosts: ["*.example.com"], deny_hosts: [evil.example.com], max_response_bytes: 5,
          default_timeout: 2}
"""
    )
    assert config.listen.port == 0
    assert config.state_dir == Path("/tmp/state")
    assert config.limits.idle_timeout == 30.0
    assert config.network.allow_hosts == ["*.example.com"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("bogus: 1", "bogus: unknown key", id="unknown-top-level-key"),
        pytest.param(
            "limits: {max_inflight: 3}", "limits.max_inflight: unknown key", id="unknown-nested-key"
        ),
        pytest.param(
            "listen: {port: '7700'}", "listen.port: Input should be a valid integer", id="string-for-int"
        ),
        pytest.param(
            "listen: {port: 70000}",
            "listen.port: Input should be less than or equal to 65535",
            id="port-out-of-range",
        ),
        pytest.param(
            "limits: {max_in_flight: 0}",
            "limits.max_in_flight: Input should be greater than 0",
            id="zero-limit",
        ),
        pytest.param(
            "network: {allow_hosts: example.com}",
            "network.allow_hosts: Input should be a valid list",
            id="string-for-list",
        ),
        pytest.param("limits: 5", "limits: Input should be", id="scalar-for-section"),
        pytest.param("- a\n- b", "the top level must be a mapping", id="list-at-top-level"),
        pytest.param("listen: {port: [", "not valid YAML (line 1", id="yaml-syntax"),
    ],
)
def test_a_bad_configuration_is_one_line_naming_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, "gateway.yaml")
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("gateway.yaml: ")
    assert expected in message


def test_several_problems_are_counted_on_the_same_line() -> None:
    with pytest.raises(ConfigError, match=r"\(and 1 more problem\)$"):
        parse_config("bogus: 1\nlisten: {port: x}")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
