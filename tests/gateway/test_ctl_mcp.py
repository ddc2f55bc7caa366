"""kruxosctl mcp config: a key for an MCP client and the client's entry, as the SDK makes it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from kruxos_gateway.ctl.cli import main as kruxosctl
from kruxos_gateway.storage import store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nworkspace: {{root: {tmp_path}}}\nlisten: {{port: 7711}}\n"
    )
    return path


def authenticates(config: Path, key: str) -> str | None:
    conn = store.connect(config.parent / "state" / "gateway.db")
    try:
        live = store.authenticate(conn, key)
        return live.name if live is not None else None
    finally:
        conn.close()


def test_the_entry_carries_a_new_working_key_for_the_client(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        kruxosctl(["--config", str(config), "mcp", "config", "claude-laptop", "--client", "claude-code"]) == 0
    )
    entry = json.loads(capsys.readouterr().out)["mcpServers"]["kruxos"]
    assert entry["type"] == "http"
    assert entry["url"] == "http://localhost:7711/mcp"
    key = entry["headers"]["Authorization"].removeprefix("Bearer ")
    assert authenticates(config, key) == "claude-laptop"


def test_claude_desktop_gets_the_bridge_and_host_reaches_the_device(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--config",
        str(config),
        "mcp",
        "config",
        "desk",
        "--client",
        "claude-desktop",
        "--host",
        "kruxos.lan:7700",
    ]
    assert kruxosctl(argv) == 0
    entry = json.loads(capsys.readouterr().out)["mcpServers"]["kruxos"]
    assert entry["args"] == ["-m", "kruxos.mcp"]
    assert entry["env"]["KRUXOS_HOST"] == "kruxos.lan:7700"
    assert authenticates(config, entry["env"]["KRUXOS_API_KEY"]) == "desk"


def test_an_existing_name_needs_rotate_and_rotating_retires_the_old_key(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kruxosctl(["--config", str(config), "mcp", "config", "agent"]) == 0
    old = json.loads(capsys.readouterr().out)["mcpServers"]["kruxos"]["headers"]["Authorization"][7:]
    assert kruxosctl(["--config", str(config), "mcp", "config", "agent"]) == 2
    assert "pass --rotate" in capsys.readouterr().err
    assert kruxosctl(["--config", str(config), "mcp", "config", "agent", "--rotate"]) == 0
    new = json.loads(capsys.readouterr().out)["mcpServers"]["kruxos"]["headers"]["Authorization"][7:]
    assert authenticates(config, new) == "agent"
    assert authenticates(config, old) is None


def test_a_bad_address_is_refused_before_any_key_is_made(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kruxosctl(["--config", str(config), "mcp", "config", "agent", "--host", "http://x:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kruxosctl: error: host has scheme 'http'")
    assert "Traceback" not in err
    assert kruxosctl(["--config", str(config), "mcp", "config", "agent"]) == 0  # the name is still free


def test_the_entry_can_go_to_a_private_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "claude.json"
    assert kruxosctl(["--config", str(config), "mcp", "config", "agent", "--output", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "mcpServers" in json.loads(target.read_text())
