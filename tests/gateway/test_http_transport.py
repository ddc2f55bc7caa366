"""Port 7700 is an HTTP server (issue #10): every request gets an HTTP answer with a JSON error body,
what a hostile client sends or withholds is bounded, features add routes beside ``/v1/supervision``,
and the WebSocket's frames are split before aiohttp's reader (``transports.frames``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from kruxos_gateway import compose
from kruxos_gateway.config import GatewayConfig
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database
from kruxos_gateway.transports import http
from kruxos_gateway.transports.frames import ClientFrames, Split
from kruxos_gateway.transports.server import GatewayServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side
from websockets.typing import Subprotocol

from .support import ALLOW_ALL, RunningGateway, eventually, make_config, timeout

Response = tuple[int, dict[str, str], bytes]


async def exchange(port: int, request: bytes) -> Response:
    """Send ``request`` as it is, read until the gateway closes; status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), timeout(5))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_response(raw)


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_of(response: Response) -> dict[str, Any]:
    _, headers, body = response
    assert headers["content-type"] == "application/json", response
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["recovery"], "every error says what to do"
    return error


@contextlib.asynccontextmanager
async def gateway_with(
    config: GatewayConfig,
    routes: Iterable[web.AbstractRouteDef] = (),
    more: Callable[[GatewayServer], Iterable[web.AbstractRouteDef]] | None = None,
) -> AsyncIterator[GatewayServer]:
    """A real gateway on loopback that also serves ``routes``, and ``more(server)`` added once built,
    as the composition root would add them."""
    db = Database(config.db_path)
    db.start()
    try:
        await db.run(functools.partial(store.create_key, name="alice", take_over=True))
        server = GatewayServer(config, db, compose.build(config, db, ALLOW_ALL).gateway, routes=routes)
        if more is not None:
            server.add_routes(more(server))
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown()
    finally:
        await db.close()


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        pytest.param("POST", "/v1/supervision", 405, "method_not_allowed", id="post-supervision"),
        pytest.param("POST", "/health", 405, "method_not_allowed", id="post-health"),
        pytest.param("PUT", "/", 405, "method_not_allowed", id="put-root"),
        pytest.param("POST", "/console", 404, "not_found", id="post-unknown-path"),
        pytest.param("GET", "/console/x", 404, "not_found", id="get-unknown-path"),
    ],
)
async def test_a_request_with_a_body_gets_an_http_answer_with_a_json_error(
    gateway: RunningGateway, method: str, path: str, status: int, error_type: str
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize"}).encode()
    response = await exchange(gateway.port, request(method, path, body, "Content-Type: application/json"))
    assert response[0] == status
    assert error_of(response)["type"] == error_type
    if status == 405:
        assert "GET" in response[1]["allow"]


@pytest.mark.asyncio
async def test_health_answers_head_with_its_headers_and_no_body(gateway: RunningGateway) -> None:
    status, headers, body = await exchange(gateway.port, request("HEAD", "/health"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) > 0
    assert body == b""


@pytest.mark.asyncio
async def test_every_answer_names_the_gateway_as_its_server(gateway: RunningGateway) -> None:
    for raw in (request("GET", "/health"), request("GET", "/nope"), b"NOT HTTP\r\n\r\n"):
        assert (await exchange(gateway.port, raw))[1]["server"] == http.SERVER_HEADER


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="not-a-method"),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", id="long-header"
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%06d: %s\r\n" % (n, b"a" * 30) for n in range(3000)),
            id="too-many-headers",
        ),
    ],
)
async def test_a_malformed_request_gets_a_json_400_and_the_connection_closes(
    gateway: RunningGateway, raw: bytes
) -> None:
    response = await exchange(gateway.port, raw)  # returns once the gateway has closed the connection
    assert response[0] in (400, 431)
    error = error_of(response)
    assert error["type"] == "bad_request"
    assert "\n" not in error["message"]


# --- what a hostile client sends or withholds ---------------------------------------------------


@pytest.mark.asyncio
async def test_headers_sent_too_slowly_are_cut_off_at_the_handshake_timeout(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"handshake_timeout": 0.5})
    async with gateway_with(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        started = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\n")

        async def trickle() -> None:  # a header byte every 50 ms, for longer than the test waits
            with contextlib.suppress(ConnectionError):
                for _ in range(400):
                    writer.write(b"X")
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())
        try:
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), timeout(5)) == b""
            assert time.monotonic() - started < timeout(3)
        finally:
            sender.cancel()
            writer.close()


@pytest.mark.asyncio
async def test_a_keep_alive_connection_left_idle_is_closed_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, limits={"handshake_timeout": 0.5})
    async with gateway_with(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: HTTP/1.1's default
            started = time.monotonic()
            raw = await asyncio.wait_for(reader.read(), timeout(5))  # the answer, then the close
            assert parse_response(raw)[0] == 200
            assert time.monotonic() - started < timeout(3)
        finally:
            writer.close()


@pytest.mark.asyncio
async def test_an_endless_body_to_a_path_that_reads_none_is_answered_then_cut_off(
    gateway: RunningGateway,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

    async def flood() -> bool:  # 64 KiB chunks, never the last one; whether the gateway cut it off
        deadline = time.monotonic() + timeout(30)
        try:
            while time.monotonic() < deadline:
                writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            return True
        return False

    sender = asyncio.create_task(flood())
    try:
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
        assert head.startswith(b"HTTP/1.1 404 ")
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(65536), timeout(10)):
                pass
        assert time.monotonic() - started < http.LINGERING_TIME + timeout(3)
        assert await asyncio.wait_for(sender, timeout(5)), "the gateway cut the endless body off"
    finally:
        sender.cancel()
        writer.close()


@pytest.mark.asyncio
async def test_a_body_past_the_size_limit_is_refused_with_413(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"max_message_bytes": 1024})
    async with gateway_with(config, [web.post("/echo", echo)]) as server:
        port = server.address[1]
        assert (await exchange(port, request("POST", "/echo", b"x" * 1000)))[2] == b"x" * 1000
        response = await exchange(port, request("POST", "/echo", b"x" * 2000))
        assert response[0] == 413
        assert error_of(response)["type"] == "request_too_large"


# --- the route table ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_routes_the_composition_root_adds_are_served_beside_the_supervision_protocol(
    tmp_path: Path,
) -> None:
    async with gateway_with(make_config(tmp_path), [web.post("/echo", echo)]) as server:
        port = server.address[1]
        status, _, body = await exchange(port, request("POST", "/echo", b'{"jsonrpc": "2.0"}'))
        assert (status, body) == (200, b'{"jsonrpc": "2.0"}')
        assert (await exchange(port, request("GET", "/health")))[0] == 200
        key = await server.db.run(functools.partial(store.create_key, name="bob"))
        async with connect(
            f"ws://127.0.0.1:{port}/v1/supervision",
            additional_headers={"Authorization": f"Bearer {key}"},
            subprotocols=[Subprotocol("kruxos.v1")],
        ) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))["type"] == "hello"


def keyed(server: GatewayServer) -> list[web.RouteDef]:
    """A route that needs a key, checked the way every route of the port checks it."""

    async def whoami(request: web.Request) -> web.StreamResponse:
        key = await server.supervision.authenticate(request)
        if isinstance(key, web.Response):
            return key
        return web.json_response({"key": key.name})

    return [web.get("/whoami", whoami)]


@pytest.mark.asyncio
async def test_a_route_that_needs_a_key_counts_failures_toward_the_limit_of_the_handshake(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, auth={"failed_handshake_limit": 2, "failed_handshake_window": 60.0})
    async with gateway_with(config, more=keyed) as server:
        port = server.address[1]
        bad = f"Authorization: Bearer {'1' * 64}"
        statuses = [(await exchange(port, request("GET", "/whoami", b"", bad)))[0] for _ in range(3)]
        assert statuses == [401, 401, 429]
        with pytest.raises(InvalidStatus) as refused:  # the same address, the same limit
            async with connect(
                f"ws://127.0.0.1:{port}/v1/supervision",
                additional_headers={"Authorization": f"Bearer {'1' * 64}"},
                subprotocols=[Subprotocol("kruxos.v1")],
            ):
                pass
        assert refused.value.response.status_code == 429
        key = await server.db.run(functools.partial(store.create_key, name="bob"))
        status, _, body = await exchange(port, request("GET", "/whoami", b"", f"Authorization: Bearer {key}"))
        assert (status, json.loads(body)) == (200, {"key": "bob"})


@pytest.mark.asyncio
async def test_routes_are_added_before_the_server_starts(gateway: RunningGateway) -> None:
    with pytest.raises(RuntimeError, match="before the server starts"):
        gateway.server.add_routes([web.post("/late", echo)])


# --- the WebSocket's frames ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_frame_declaring_more_than_the_hard_limit_closes_1009_before_its_payload(
    gateway: RunningGateway,
) -> None:
    async with gateway.client() as client:
        # A masked text frame header announcing 2**40 bytes, and none of them.
        client.ws.transport.write(bytes([0x81, 0x80 | 127]) + (2**40).to_bytes(8) + b"mask")
        assert (await client.closed())[0] == 1009
    await eventually(lambda: not gateway.server._live)


@pytest.mark.asyncio
async def test_a_fragmented_message_is_answered_like_any_other(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        text = json.dumps({"type": "request", "id": "frag", "method": "ping"})
        await client.ws.send([text[:10], text[10:20], text[20:]])  # three frames
        assert (await client.recv())["id"] == "frag"
        assert (await client.request("ping"))["type"] == "response"  # and the next one too


def client_frames(*frames: Frame) -> bytes:
    return b"".join(frame.serialize(mask=True) for frame in frames)


def taking(limit: int = 1000) -> ClientFrames:
    frames = ClientFrames(limit)
    frames.taking = True
    return frames


def test_a_text_message_in_one_frame_is_taken_and_nothing_is_passed_on() -> None:
    split = taking().feed(client_frames(Frame(Opcode.TEXT, "é1".encode()), Frame(Opcode.TEXT, b"2")))
    assert split == Split(texts=["é1", "2"])


def test_until_taking_is_set_every_frame_is_passed_on() -> None:
    data = client_frames(Frame(Opcode.TEXT, b"1"))
    assert ClientFrames(1000).feed(data) == Split(passthrough=data)


def test_a_header_announcing_a_message_past_the_limit_is_refused_with_none_of_it_passed_on() -> None:
    frames = taking(limit=100)
    before = client_frames(Frame(Opcode.PING, b"p"))
    split = frames.feed(before + client_frames(Frame(Opcode.TEXT, b"x" * 101))[:6])  # the header alone
    assert split == Split(passthrough=before, too_big=True)
    assert frames.feed(b"more") == Split(too_big=True)


def test_the_limit_counts_every_fragment_of_a_message() -> None:
    first = client_frames(Frame(Opcode.TEXT, b"x" * 60, fin=False))
    split = taking(limit=100).feed(first + client_frames(Frame(Opcode.CONT, b"x" * 41)))
    assert split == Split(passthrough=first, too_big=True)


def test_a_pong_is_not_activity_and_a_ping_is() -> None:
    frames = taking()
    frames.last_activity = 0.0
    frames.feed(client_frames(Frame(Opcode.PONG, b"")))
    assert frames.last_activity == 0.0
    frames.feed(client_frames(Frame(Opcode.PING, b"")))
    assert frames.last_activity > 0.0


def test_a_text_frame_that_is_not_utf8_is_left_to_aiohttp_to_refuse() -> None:
    data = client_frames(Frame(Opcode.TEXT, b"\xff"))
    assert taking().feed(data) == Split(passthrough=data)


MESSAGES = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("fragmented"), st.lists(st.text(max_size=20), min_size=2, max_size=4)),
        st.tuples(st.just("binary"), st.binary(max_size=20)),
        st.tuples(st.just("ping"), st.binary(max_size=10)),
    ),
    max_size=12,
)


def encode(kind: str, value: Any) -> bytes:
    if kind == "text":
        return client_frames(Frame(Opcode.TEXT, value.encode()))
    if kind == "binary":
        return client_frames(Frame(Opcode.BINARY, value))
    if kind == "ping":
        return client_frames(Frame(Opcode.PING, value))
    parts = [part.encode() for part in value]
    return client_frames(
        Frame(Opcode.TEXT, parts[0], fin=False),
        *(Frame(Opcode.CONT, part, fin=False) for part in parts[1:-1]),
        Frame(Opcode.CONT, parts[-1]),
    )


def passed_on(data: bytes) -> list[tuple[str, Any]]:
    """The messages (and pings) in ``data``, as websockets' own parser reads them."""
    parser = Protocol(Side.SERVER, max_size=None)
    parser.receive_data(data)
    messages: list[tuple[str, Any]] = []
    fragments: list[bytes] = []
    for frame in parser.events_received():
        assert isinstance(frame, Frame)
        if frame.opcode is Opcode.PING:
            messages.append(("ping", bytes(frame.data)))
            continue
        fragments.append(bytes(frame.data))
        if frame.fin:
            opcode = frame.opcode if len(fragments) == 1 else Opcode.TEXT
            if opcode is Opcode.BINARY:
                messages.append(("binary", fragments[0]))
            elif len(fragments) == 1:
                messages.append(("text", fragments[0].decode()))
            else:
                messages.append(("fragmented", [f.decode() for f in fragments]))
            fragments = []
    return messages


@given(MESSAGES, st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_however_the_bytes_are_cut_every_message_comes_out_once_and_in_order(
    messages: list[tuple[str, Any]], cuts: list[int]
) -> None:
    data = b"".join(encode(kind, value) for kind, value in messages)
    frames = taking()
    texts: list[str] = []
    passthrough = b""
    pos = 0
    for size in [*cuts, len(data)]:
        split = frames.feed(data[pos : pos + size])
        assert not split.too_big
        texts += split.texts
        passthrough += split.passthrough
        pos += size
    # Taken: the one-frame texts up to the first other data message; the rest goes on, pings too.
    first_other = next((n for n, (kind, _) in enumerate(messages) if kind in ("fragmented", "binary")), None)
    head, tail = messages[:first_other], messages[first_other:] if first_other is not None else []
    assert texts == [value for kind, value in head if kind == "text"]
    assert passed_on(passthrough) == [m for m in head if m[0] == "ping"] + tail
