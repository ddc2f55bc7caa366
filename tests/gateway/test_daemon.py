"""``python -m kruxos_gateway`` as a process: readiness, sd_notify, signals, one-line config errors."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kruxos_gateway.storage import store
from websockets.asyncio.client import connect

from .support import eventually, http_get, timeout, wait_until


def write_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "workspace").mkdir(exist_ok=True)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 7700}}\nstate_dir: {tmp_path / 'state'}\n"
        f"workspace: {{root: {tmp_path / 'workspace'}}}\n{extra}"
    )
    return config


class Daemon:
    def __init__(self, tmp_path: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.port_file = tmp_path / "port"
        self.stderr_path = tmp_path / "stderr.log"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kruxos_gateway",
                    "--config",
                    str(config),
                    "--port",
                    "0",
                    "--port-file",
                    str(self.port_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self) -> int:
        wait_until(lambda: self.port_file.exists() or self.proc.poll() is not None, seconds=15)
        assert self.proc.poll() is None, self.stderr
        return int(self.port_file.read_text())

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout(15))


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        daemon.proc.wait()


@pytest.mark.asyncio
async def test_the_real_port_is_written_to_the_port_file_once_listening(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = Daemon(tmp_path, write_config(tmp_path))
    daemons.append(daemon)
    port = daemon.wait_ready()
    assert port != 7700
    assert port > 0
    status, _, body = await http_get(port, "/health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    assert await asyncio.to_thread(daemon.stop) == 0


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_readiness_is_notified_to_systemd(tmp_path: Path, daemons: list[Daemon], kind: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        if kind == "abstract":
            name = f"kruxos-test-{secrets.token_hex(8)}"
            notify_socket.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify.sock")
            notify_socket.bind(address)
        notify_socket.settimeout(timeout(15))
        daemon = Daemon(tmp_path, write_config(tmp_path), env={"NOTIFY_SOCKET": address})
        daemons.append(daemon)
        message = notify_socket.recv(4096).decode()
        port = daemon.wait_ready()
        assert message == f"READY=1\nSTATUS=listening on 127.0.0.1:{port}"
        assert daemon.stop() == 0
        assert notify_socket.recv(4096).decode().startswith("STOPPING=1")


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_drains_in_flight_requests_then_exits_0(
    tmp_path: Path, daemons: list[Daemon], sig: signal.Signals
) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    conn = store.connect(tmp_path / "state" / "gateway.db")
    key = store.create_key(conn, "alice")
    conn.close()
    daemon = Daemon(tmp_path, config)
    daemons.append(daemon)
    port = daemon.wait_ready()
    async with connect(
        f"ws://127.0.0.1:{port}/v1/supervision",
        subprotocols=["kruxos.v1"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(
            json.dumps(
                {
                    "type": "request",
                    "id": "slow",
                    "method": "capabilities.invoke",
                    "params": {
                        "name": "process.run",
                        "inputs": {
                            "command": "touch started; while [ ! -f go ]; do sleep 0.01; done; echo done"
                        },
                    },
                }
            )
        )
        await eventually(lambda: (tmp_path / "workspace" / "started").exists())
        daemon.proc.send_signal(sig)
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
        assert event["event"] == "gateway.shutdown"
        (tmp_path / "workspace" / "go").touch()
        answer = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
        assert answer["id"] == "slow"
        assert answer["result"]["data"]["stdout"] == "done\n"
        with pytest.raises(Exception):  # noqa: B017, PT011 - the close itself is what is checked
            await asyncio.wait_for(ws.recv(), timeout(10))
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1001
    assert await asyncio.to_thread(daemon.proc.wait, timeout(15)) == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param("bogus: 1\n", "bogus: unknown key", id="unknown-key"),
        pytest.param(
            "limits: {max_in_flight: many}\n",
            "limits.max_in_flight: Input should be a valid integer",
            id="wrong-type",
        ),
        pytest.param(
            "process: {run_as_user: no-such-user-kruxos}\n",
            "process.run_as_user: no such user",
            id="unknown-user",
        ),
        pytest.param("listen: [\n", "not valid YAML", id="bad-yaml"),
    ],
)
def test_a_bad_configuration_stops_the_daemon_with_one_line_and_exit_2(
    tmp_path: Path, extra: str, expected: str
) -> None:
    config = write_config(tmp_path, extra)
    result = subprocess.run(
        [sys.executable, "-m", "kruxos_gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kruxos-gateway: config error: ")
    assert expected in lines[0]


def test_a_missing_configuration_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kruxos_gateway", "--config", str(tmp_path / "absent.yaml")],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "no such file" in result.stderr


def test_a_bad_port_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kruxos_gateway", "--config", str(write_config(tmp_path)), "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "--port" in result.stderr


def test_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kruxos_gateway",
                "--config",
                str(write_config(tmp_path)),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        result.stderr.splitlines()[-1]
    ]
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr
