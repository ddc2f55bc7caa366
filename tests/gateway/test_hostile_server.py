"""Hostile clients against the server itself (issue #11): what one client sends or holds costs no
other client its audit records, its handshake, its file descriptors, the gateway's memory or an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kruxos_gateway.storage import db as db_module
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database
from kruxos_gateway.transports import admission
from kruxos_gateway.transports.ratelimit import ConnectionGate
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from .support import Client, RunningGateway, eventually, make_config, running_gateway, timeout, wait_until

pytestmark = pytest.mark.asyncio


def invoke_frame(request_id: str, name: str, **inputs: Any) -> dict[str, Any]:
    return {
        "type": "request",
        "id": request_id,
        "method": "capabilities.invoke",
        "params": {"name": name, "inputs": inputs},
    }


async def answers(client: Client, ids: set[str], seconds: float = 10.0) -> dict[str, dict[str, Any]]:
    """The answers to ``ids`` that arrive within ``seconds`` (an unanswered request is simply missing)."""
    got: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout(seconds)):
            while set(got) != ids:
                frame = await client.recv(seconds)
                if frame.get("id") in ids:
                    got[frame["id"]] = frame
    return got


# --- 1. audit records -----------------------------------------------------------------------------


async def test_a_lone_surrogate_in_one_input_loses_no_audit_record_of_any_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held until flush(): all 40 records of both agents reach the database as one batch.
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)
    async with running_gateway(make_config(tmp_path)) as gateway:
        (gateway.workspace / "a.txt").write_text("a")
        bob_key = await gateway.create_key("bob")
        async with gateway.client() as alice, gateway.client(bob_key) as bob:
            sent: dict[Client, set[str]] = {alice: set(), bob: set()}
            for n in range(20):
                for client in (alice, bob):
                    request_id = f"r{n}"
                    if client is alice and n == 7:  # "\ud800" is valid JSON; it has no UTF-8 form
                        frame = invoke_frame(request_id, "state.session.set", key="k", value="\ud800")
                    else:
                        frame = invoke_frame(request_id, "filesystem.read", path="a.txt")
                    await client.send(frame)
                    sent[client].add(request_id)
            answered = {client: await answers(client, ids) for client, ids in sent.items()}
            await gateway.db.flush()
            rows = await gateway.db.run(
                lambda conn: conn.execute("SELECT session_id, invocation_id FROM audit").fetchall()
            )
    audited = {(row[0], row[1]) for row in rows}
    for client, frames in answered.items():
        session = client.hello["session_id"]
        for frame in frames.values():
            assert frame["type"] == "response", frame
            assert (session, frame["result"]["invocation_id"]) in audited, f"no audit row for {frame}"
    assert len(audited) == 40
    assert all(set(answered[client]) == ids for client, ids in sent.items()), "every request is answered"


def _event(invocation_id: str) -> store.AuditEvent:
    return store.AuditEvent(datetime.now(UTC), "k", "s", invocation_id, "c", {}, "success", 0.0)


async def test_one_row_its_writer_cannot_store_loses_no_other_row_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)

    def writer(conn: sqlite3.Connection, events: Sequence[store.AuditEvent]) -> None:
        for event in events:  # writes some rows, then fails: what it wrote must not stay twice
            if event.invocation_id == "bad":
                raise sqlite3.IntegrityError("this row cannot be stored")
            store.append_audit_events(conn, [event])

    db = Database(tmp_path / "g.db")
    db.start()
    try:
        for invocation_id in ("one", "two", "bad", "three"):
            db.submit_row(writer, _event(invocation_id))
        await db.flush()
        stored = await db.run(
            lambda conn: [r[0] for r in conn.execute("SELECT invocation_id FROM audit ORDER BY id")]
        )
    finally:
        await db.close()
    assert stored == ["one", "two", "three"]


# --- 2. the failed-handshake limiter ----------------------------------------------------------------


async def handshake_status(gateway: RunningGateway, key: str) -> int:
    """101 if the handshake with ``key`` opens a session, else the HTTP status it was refused with."""
    try:
        async with gateway.client(key):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_valid_key_is_let_in_from_an_address_past_the_failed_handshake_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path, auth={"failed_handshake_limit": 3, "failed_handshake_window": 60.0})
    async with running_gateway(config) as gateway:
        bad = "1" * 64
        assert [await handshake_status(gateway, bad) for _ in range(3)] == [401, 401, 401]
        assert await handshake_status(gateway, bad) == 429  # the address is limited...
        assert await handshake_status(gateway, gateway.key) == 101  # ...but not for a valid key
        assert await handshake_status(gateway, await gateway.create_key("bob")) == 101
        assert await handshake_status(gateway, bad) == 429  # and bad keys are still shed


# --- 3. descriptors ---------------------------------------------------------------------------------

DAEMON_DESCRIPTORS = 128  # the daemon's RLIMIT_NOFILE in this test, soft and hard


@contextlib.contextmanager
def daemon(tmp_path: Path, limits: str, descriptors: int) -> Iterator[tuple[int, str]]:
    """``python -m kruxos_gateway`` with at most ``descriptors`` open files; its port and a key."""
    (tmp_path / "workspace").mkdir()
    (tmp_path / "state").mkdir()
    conn = store.connect(tmp_path / "state" / "gateway.db")
    key = store.create_key(conn, "alice")
    conn.close()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 7700}}\nstate_dir: {tmp_path / 'state'}\n"
        f"workspace: {{root: {tmp_path / 'workspace'}}}\nlimits: {limits}\n"
    )

    def limit_descriptors() -> None:  # in the child, before exec: it cannot raise the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

    port_file = tmp_path / "port"
    with (tmp_path / "stderr.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kruxos_gateway",
                "--config",
                str(config),
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=limit_descriptors,
        )
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, seconds=15)
        assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
        yield int(port_file.read_text()), key
    finally:
        proc.kill()
        proc.wait()


async def open_idle(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A TCP connection from ``source`` that sends nothing; ``None`` if it cannot even be opened."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout(1)
        )
    except (OSError, TimeoutError):
        return None


async def still_open(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """How many of ``connections`` the daemon keeps open, once it has accepted (and maybe closed)
    all of them: a connection it has not accepted yet looks open, so wait until the count settles."""
    open_now = list(connections)
    deadline = asyncio.get_running_loop().time() + timeout(10)
    while True:
        open_now = [c for c in open_now if not await is_closed(c[0])]
        if len(open_now) <= 20 or asyncio.get_running_loop().time() > deadline:
            return len(open_now)


async def is_closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.01) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_idle_connections_without_a_key_leave_the_descriptors_of_authenticated_agents(
    tmp_path: Path,
) -> None:
    limits = (
        "{max_unauthenticated_connections: 20, max_unauthenticated_per_address: 5, handshake_timeout: 60}"
    )
    with daemon(tmp_path, limits, DAEMON_DESCRIPTORS) as (port, key):
        (tmp_path / "workspace" / "notes.txt").write_text("still here")
        url = f"ws://127.0.0.1:{port}/v1/supervision"
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {key}"},
            subprotocols=[Subprotocol("kruxos.v1")],
        ) as ws:
            agent = Client(ws, json.loads(await ws.recv()))
            idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                for n in range(300):  # from 10 addresses, 30 each: more than the daemon has descriptors
                    opened = await open_idle(port, f"127.0.0.{2 + n % 10}")
                    if opened is not None:
                        idle.append(opened)
                frame = await agent.invoke("filesystem.read", path="notes.txt")
                assert frame["result"]["success"], frame["result"]["error"]
                assert frame["result"]["data"]["content"] == "still here"
                assert len(idle) == 300, "each connection was accepted, if only to be closed"
                assert await still_open(idle) <= 20, "the connections past the limits are closed"
            finally:
                for _, writer in idle:
                    writer.transport.abort()


async def test_the_gate_caps_unauthenticated_connections_in_total_per_address_and_by_descriptor() -> None:
    gate = ConnectionGate(total=3, per_address=2, descriptor_ceiling=100)
    assert gate.admit("10.0.0.1", 10) is None
    assert gate.admit("10.0.0.1", 11) is None
    assert "from it" in (gate.admit("10.0.0.1", 12) or "")  # per address
    assert "reserve" in (gate.admit("10.0.0.2", 100) or "")  # descriptors left for authenticated work
    assert gate.admit("10.0.0.2", 12) is None
    assert "limit 3" in (gate.admit("10.0.0.3", 13) or "")  # in total
    gate.release("10.0.0.1")  # one authenticated (or ended)
    assert gate.admit("10.0.0.1", 14) is None


# --- 4. answers queued for a client that does not read -------------------------------------------------


@contextlib.asynccontextmanager
async def not_reading(gateway: RunningGateway) -> AsyncIterator[ClientConnection]:
    """A session whose client reads its hello, then nothing: a small receive buffer, and a
    websockets client that stops reading its socket once one message is waiting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    sock.setblocking(False)
    async with gateway.connect_raw(sock=sock, max_queue=1, ping_interval=None) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        try:
            yield ws
        finally:
            ws.transport.abort()


ANSWER_SIZE = 64 * 1024
QUEUE_BOUND = 256 * 1024


async def flood(gateway: RunningGateway, ws: ClientConnection, requests: int = 400) -> None:
    """Ask for far more answers than the socket buffers hold (25 MiB), in bursts each answered
    before the next, so that none is refused as too many in flight."""
    (gateway.workspace / "big.txt").write_text("x" * ANSWER_SIZE)
    for n in range(requests):
        await ws.send(json.dumps(invoke_frame(str(n), "filesystem.read", path="big.txt")))
        if n % 16 == 15:
            await asyncio.sleep(0.02)


async def test_a_client_that_never_reads_cannot_queue_unbounded_answers(tmp_path: Path) -> None:
    async with running_gateway(make_config(tmp_path, limits={"max_queued_bytes": QUEUE_BOUND})) as gateway:
        async with not_reading(gateway) as ws:
            await eventually(lambda: len(gateway.server._live) == 1)
            hostile = next(iter(gateway.server._live))
            await flood(gateway, ws)
            queued = 0
            in_flight = 0
            deadline = asyncio.get_running_loop().time() + timeout(3)
            while asyncio.get_running_loop().time() < deadline:
                queued = max(queued, hostile.connection.transport.get_write_buffer_size())
                in_flight = max(in_flight, len(hostile.session.in_flight))
                await asyncio.sleep(0.01)
            assert queued <= QUEUE_BOUND + 2 * ANSWER_SIZE, (
                f"{queued} bytes queued for a client that does not read"
            )
            assert in_flight <= gateway.config.limits.max_in_flight
            async with gateway.client() as other:  # and another agent is served meanwhile
                assert (await other.request("ping"))["type"] == "response"
                assert (await other.data("filesystem.read", path="big.txt"))["size"] == ANSWER_SIZE
        await eventually(lambda: not gateway.server._live)


async def test_a_client_that_reads_nothing_for_idle_timeout_is_dropped(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"max_queued_bytes": QUEUE_BOUND, "idle_timeout": 1.0})
    async with running_gateway(config) as gateway, not_reading(gateway) as ws:
        await flood(gateway, ws)
        # It sent requests a moment ago and has answers in flight, but has read nothing for 1 s.
        await eventually(lambda: not gateway.server._live, seconds=5)


async def test_a_client_that_never_reads_does_not_hold_up_the_drain(tmp_path: Path) -> None:
    async with running_gateway(make_config(tmp_path, limits={"max_queued_bytes": QUEUE_BOUND})) as gateway:
        async with not_reading(gateway) as ws:
            await eventually(lambda: len(gateway.server._live) == 1)
            hostile = next(iter(gateway.server._live))
            await flood(gateway, ws)
            await eventually(lambda: hostile.connection.transport.get_write_buffer_size() > QUEUE_BOUND)
            # drain_timeout is 10 s: the drain must not wait for this client, let alone for good.
            await asyncio.wait_for(gateway.server.shutdown(), timeout(5))
        assert not gateway.server._live


# --- 5. depth and numbers ------------------------------------------------------------------------------


async def test_a_frame_nested_5000_deep_gets_invalid_input_not_a_closed_connection(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    deep = "[" * 5000 + "]" * 5000
    message = (
        '{"type": "request", "id": "deep", "method": "capabilities.invoke", '
        f'"params": {{"name": "state.shared.set", "inputs": {{"key": "k", "value": {deep}}}}}}}'
    )
    with caplog.at_level(logging.ERROR):
        async with gateway.client() as client:
            for _ in range(3):
                await client.send(message)
                frame = await client.recv()
                assert frame["id"] == "deep"
                assert frame["error"]["type"] == "invalid_input"
                assert frame["error"]["details"] == {"input": "value"}
                assert "64 deep" in frame["error"]["message"]
            assert (await client.request("ping"))["type"] == "response"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback per frame"


@pytest.mark.parametrize(
    ("name", "inputs", "field"),
    [
        pytest.param("state.persistent.get", {"key": "k", "version": 2**63}, "version", id="version-2**63"),
        pytest.param("state.persistent.history", {"key": "k", "limit": 2**63}, "limit", id="limit-2**63"),
        pytest.param(
            "state.persistent.get", {"key": "k", "version": -(2**63) - 1}, "version", id="version-below"
        ),
        pytest.param("state.persistent.history", {"key": "k", "limit": 10**30}, "limit", id="limit-10**30"),
    ],
)
async def test_an_integer_outside_64_bits_gets_invalid_input_naming_it_not_internal_error(
    gateway: RunningGateway, name: str, inputs: dict[str, Any], field: str
) -> None:
    async with gateway.client() as client:
        frame = await client.invoke(name, **inputs)
    assert frame["type"] == "error", frame
    assert frame["error"]["type"] == "invalid_input"
    assert frame["error"]["details"] == {"input": field}
    assert "64-bit" in frame["error"]["message"]


async def test_integers_at_the_64_bit_limit_are_accepted(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        assert (await client.data("state.persistent.get", key="k", version=2**63 - 1))["found"] is False
        assert (await client.data("state.persistent.history", key="k", limit=2**63 - 1))["versions"] == []


async def test_a_shared_state_value_nested_300_deep_is_refused_at_input_not_stored_unreadable(
    gateway: RunningGateway,
) -> None:
    value: Any = "bottom"
    for _ in range(300):
        value = {"down": value}
    async with gateway.client() as client:
        frame = await client.invoke("state.shared.set", key="deep", value=value)
        assert frame["type"] == "error", frame
        assert frame["error"]["type"] == "invalid_input"
        assert frame["error"]["details"] == {"input": "value"}
        assert (await client.data("state.shared.get", key="deep"))["found"] is False


async def test_an_input_holding_a_lone_surrogate_still_gets_its_answer(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        assert (await client.data("state.session.set", key="k", value="\ud800"))["key"] == "k"
        assert (await client.data("state.session.get", key="k"))["value"] == "\ud800"
        frame = await client.invoke("no.such\udc00capability")
        assert frame["error"]["type"] == "unknown_capability"
        assert "no.such" in frame["error"]["message"]


@pytest.mark.asyncio
async def test_idle_connections_from_the_agents_own_address_do_not_keep_other_agents_out(
    tmp_path: Path,
) -> None:
    # On the device every local agent connects from 127.0.0.1: one that holds that address's quota of
    # idle connections must not lock the others out until the handshake timeout.
    config = make_config(tmp_path, limits={"max_unauthenticated_per_address": 4, "handshake_timeout": 60})
    async with running_gateway(config) as gateway:
        idle = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(4)]
        try:
            await asyncio.sleep(admission.EVICTION_GRACE + 0.2)
            started = time.monotonic()
            async with gateway.client() as client:
                assert (await client.result("filesystem.list"))["success"]
            assert time.monotonic() - started < timeout(2)
        finally:
            for _, writer in idle:
                writer.close()
