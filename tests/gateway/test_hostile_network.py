"""network.http_request against hostile URLs and servers (issue #11).

Every refusal is checked against a real loopback server that must see no connection at all: the
check happens before connecting, on the canonical host and on every address it resolves to, and
again for every redirect hop (config rules, address rules and the policy). Requests have one total
deadline and run on the event loop, so a slow server holds neither the caller nor other agents' files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kruxos_gateway.capabilities import network
from kruxos_gateway.config import parse_config
from kruxos_gateway.errors import ConfigError
from kruxos_gateway.policy.rules import parse_policy

from .support import RunningGateway, eventually, make_config, running_gateway, timeout

LOOPBACK = {"allow_addresses": ["127.0.0.0/8"]}


# --- a loopback HTTP server on asyncio streams ------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body: bytes


Route = Callable[["WebServer", Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    async def route(
        web: WebServer, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return route


def redirect(location: Callable[[], str], status: int = 302) -> Route:
    async def route(
        web: WebServer, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reply(status, headers={"Location": location()})(web, request, reader, writer)

    return route


def trickle(*, interval: float, length: int = 100, head_too: bool = False) -> Route:
    """A 200 whose body (and, with ``head_too``, status line and headers) comes one byte per interval.

    Sets ``web.gone`` when the client closes the connection before the end.
    """

    async def route(
        web: WebServer, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()
        chunks = [head[i : i + 1] for i in range(len(head))] if head_too else [head]
        chunks += [b"x"] * length
        for chunk in chunks:
            try:
                writer.write(chunk)
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    web.gone.set()
                    return
            except TimeoutError:
                continue
            except ConnectionError:
                web.gone.set()
                return

    return route


class WebServer:
    """Answers by path (404 otherwise); counts TCP connections and records requests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        routes: dict[str, Route] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.routes = routes or {}
        self.tls = tls
        self.connections = 0
        self.requests: list[Request] = []
        self.gone = asyncio.Event()
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def __aenter__(self) -> WebServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        finished = False
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head[:-4].split("\r\n")
            method, target, _ = request_line.split(" ")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, target, headers, body)
            self.requests.append(request)
            route = self.routes.get(target.partition("?")[0], reply(404, b"no such route"))
            await route(self, request, reader, writer)
            finished = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            if finished:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
            else:
                writer.transport.abort()


# --- a gateway, optionally with a policy ----------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path, network_config: dict[str, Any] | None = None, policy: str | None = None
) -> AsyncIterator[RunningGateway]:
    rules = parse_policy(policy, "test-policy.yaml") if policy is not None else None
    async with running_gateway(make_config(tmp_path, network=network_config or {}), policy=rules) as gw:
        yield gw


async def request(
    tmp_path: Path,
    network_config: dict[str, Any] | None = None,
    policy: str | None = None,
    seconds: float = 5.0,
    **inputs: Any,
) -> dict[str, Any]:
    """The answer frame of one network.http_request."""
    async with gateway(tmp_path, network_config, policy) as gw, gw.client() as client:
        return await client.invoke("network.http_request", seconds, **inputs)


def outcome(frame: dict[str, Any]) -> str:
    """``success``, or the error type of an error frame or of a failed result."""
    if frame["type"] == "error":
        return str(frame["error"]["type"])
    result = frame["result"]
    return "success" if result["success"] else str(result["error"]["type"])


# --- bypass forms of the host ---------------------------------------------------------------------

LOOPBACK_FORMS = [
    pytest.param("127.1", id="shorthand-127.1"),
    pytest.param("2130706433", id="decimal-2130706433"),
    pytest.param("0x7f000001", id="hex-0x7f000001"),
    pytest.param("0177.0.0.1", id="octal-0177.0.0.1"),
    pytest.param("0x7f.1", id="hex-shorthand-0x7f.1"),
    pytest.param("0", id="zero"),
    pytest.param("[::ffff:127.0.0.1]", id="ipv4-mapped-ipv6"),
    pytest.param("[::ffff:7f00:1]", id="ipv4-mapped-ipv6-hex"),
    pytest.param("127.0.0.1", id="dotted-quad"),
    pytest.param("127.0.0.1.", id="dotted-quad-trailing-dot"),
    pytest.param("[::1]", id="ipv6-loopback"),
]


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
@pytest.mark.asyncio
async def test_numeric_shorthand_for_loopback_is_refused(tmp_path: Path, host: str) -> None:
    async with WebServer(routes={"/": reply(200, b"secret")}) as web:
        frame = await request(tmp_path, url=f"http://{host}:{web.port}/")
    assert outcome(frame) == "host_not_allowed", frame
    assert web.connections == 0


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("localhost", id="localhost"),
        pytest.param("LocalHost.", id="upper-case-trailing-dot"),
        pytest.param("ｌｏｃａｌｈｏｓｔ", id="fullwidth-idna"),  # noqa: RUF001 (the point of the test)
    ],
)
@pytest.mark.asyncio
async def test_a_name_from_etc_hosts_that_maps_to_loopback_is_refused(tmp_path: Path, host: str) -> None:
    async with WebServer(routes={"/": reply(200, b"secret")}) as web:
        frame = await request(tmp_path, url=f"http://{host}:{web.port}/")
    assert outcome(frame) == "host_not_allowed", frame
    assert web.connections == 0


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("10.0.0.1", id="rfc1918-10"),
        pytest.param("172.16.0.1", id="rfc1918-172"),
        pytest.param("192.168.1.1", id="rfc1918-192"),
        pytest.param("100.64.0.1", id="cgnat"),
        pytest.param("169.254.169.254", id="link-local-metadata"),
        pytest.param("0.0.0.0", id="unspecified"),
        pytest.param("224.0.0.1", id="multicast"),
        pytest.param("255.255.255.255", id="broadcast"),
        pytest.param("[::]", id="ipv6-unspecified"),
        pytest.param("[fe80::1]", id="ipv6-link-local"),
        pytest.param("[fd00::1]", id="ipv6-ula"),
        pytest.param("[ff02::1]", id="ipv6-multicast"),
        pytest.param("[::ffff:10.0.0.1]", id="ipv4-mapped-private"),
        pytest.param("[64:ff9b::a9fe:a9fe]", id="nat64-link-local"),
        pytest.param("[2002:7f00:1::]", id="6to4-loopback"),
    ],
)
@pytest.mark.asyncio
async def test_special_purpose_addresses_are_refused_without_connecting(tmp_path: Path, address: str) -> None:
    started = time.monotonic()
    frame = await request(tmp_path, url=f"http://{address}/", timeout=30)
    assert outcome(frame) == "host_not_allowed", frame
    assert frame["result"]["error"]["details"]["address"]
    assert time.monotonic() - started < timeout(3)  # refused at once: no connection was tried


def _own_address() -> str | None:
    """A non-loopback address of this machine (the source address of a route out), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.200", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.asyncio
async def test_this_machines_own_address_is_refused(tmp_path: Path) -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    try:
        web = WebServer(host=own, routes={"/": reply(200, b"secret")})
        await web.__aenter__()
    except OSError:
        pytest.skip(f"cannot listen on {own}")
    try:
        frame = await request(tmp_path, url=f"{web.url}/")
    finally:
        await web.__aexit__()
    assert outcome(frame) == "host_not_allowed", frame
    assert web.connections == 0


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("local%68ost", id="one-escape"),
        pytest.param("%6c%6f%63%61%6c%68%6f%73%74", id="all-escaped"),
        pytest.param("127.0.0.%31", id="escaped-digit"),
        pytest.param("localhost%2eexample.com", id="escaped-dot"),
    ],
)
@pytest.mark.asyncio
async def test_a_percent_encoded_host_is_refused(tmp_path: Path, host: str) -> None:
    # Loopback allowed: only the deny list stands between the agent and the server.
    config = {**LOOPBACK, "deny_hosts": ["localhost", "127.0.0.1"]}
    async with WebServer(routes={"/": reply(200, b"secret")}) as web:
        frame = await request(tmp_path, config, url=f"http://{host}:{web.port}/")
    assert outcome(frame) == "invalid_input", frame
    assert frame["error"]["details"] == {"input": "url"}
    assert web.connections == 0


@pytest.mark.parametrize(
    ("deny", "host"),
    [
        pytest.param("127.0.0.1", "127.1", id="shorthand"),
        pytest.param("127.0.0.1", "0x7f000001", id="hex"),
        pytest.param("127.0.0.1", "[::ffff:127.0.0.1]", id="ipv4-mapped"),
        pytest.param("localhost", "LOCALHOST.", id="name-case-and-dot"),
        pytest.param("127.0.0.0/8", "localhost", id="cidr-applies-to-resolved-address"),
    ],
)
@pytest.mark.asyncio
async def test_deny_hosts_apply_to_the_canonical_host_and_its_addresses(
    tmp_path: Path, deny: str, host: str
) -> None:
    config = {"allow_addresses": ["127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104"], "deny_hosts": [deny]}
    async with WebServer(routes={"/": reply(200, b"secret")}) as web:
        frame = await request(tmp_path, config, url=f"http://{host}:{web.port}/")
    assert outcome(frame) == "host_not_allowed", frame
    assert web.connections == 0


@pytest.mark.asyncio
async def test_allow_addresses_lets_the_operator_reach_a_local_service(tmp_path: Path) -> None:
    async with WebServer(routes={"/": reply(200, b"local service")}) as web:
        frame = await request(
            tmp_path, {"allow_addresses": ["127.0.0.1/32"]}, url=f"http://127.1:{web.port}/"
        )
    assert outcome(frame) == "success", frame
    assert frame["result"]["data"]["body"] == "local service"
    assert web.requests[0].headers["host"] == f"127.0.0.1:{web.port}"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("network: {allow_addresses: 127.0.0.0/8}", id="allow_addresses-not-a-list"),
        pytest.param("network: {allow_addresses: [10.0.0.1/8]}", id="allow_addresses-host-bits"),
        pytest.param("network: {allow_addresses: [nonsense]}", id="allow_addresses-not-a-cidr"),
        pytest.param("network: {deny_hosts: ['local%68ost']}", id="deny_hosts-percent-encoded"),
        pytest.param("network: {max_timeout: 0}", id="max_timeout-zero"),
    ],
)
def test_bad_network_config_is_a_one_line_error(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    message = str(caught.value)
    assert "\n" not in message
    assert "network." in message


# --- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        pytest.param("http://127.0.0.2:{port}/", id="other-loopback-address"),
        pytest.param("http://[::ffff:127.0.0.2]:{port}/", id="ipv4-mapped"),
        pytest.param("http://2130706434:{port}/", id="decimal"),
        pytest.param("http://127.0.0.%32:{port}/", id="percent-encoded"),
        pytest.param("http://0:{port}/", id="zero"),
    ],
)
@pytest.mark.asyncio
async def test_a_redirect_from_an_allowed_server_to_a_denied_address_is_refused(
    tmp_path: Path, location: str
) -> None:
    async with (
        WebServer("127.0.0.2", routes={"/": reply(200, b"secret")}) as denied,
        WebServer(routes={"/": redirect(lambda: location.format(port=denied.port))}) as allowed,
    ):
        frame = await request(tmp_path, {"allow_addresses": ["127.0.0.1/32"]}, url=f"{allowed.url}/")
    assert outcome(frame) == "host_not_allowed", frame
    assert len(allowed.requests) == 1
    assert denied.connections == 0


DENY_B_POLICY = """
version: 1
default: allow
rules:
  - name: not-the-internal-box
    decision: deny
    capability: network.http_request
    inputs: {url: {host: 127.0.0.2}}
    why: the internal box is off limits
"""


@pytest.mark.parametrize(
    ("status", "location"),
    [
        pytest.param(302, "http://127.0.0.2:{port}/", id="302-dotted-quad"),
        pytest.param(307, "http://127.2:{port}/", id="307-shorthand"),
        pytest.param(301, "//127.0.0.2:{port}/", id="301-scheme-relative"),
    ],
)
@pytest.mark.asyncio
async def test_a_redirect_to_a_host_the_policy_denies_is_refused_by_policy(
    tmp_path: Path, status: int, location: str
) -> None:
    async with (
        WebServer("127.0.0.2", routes={"/": reply(200, b"secret")}) as denied,
        WebServer(routes={"/": redirect(lambda: location.format(port=denied.port), status)}) as allowed,
    ):
        frame = await request(tmp_path, LOOPBACK, DENY_B_POLICY, url=f"{allowed.url}/")
    assert frame["type"] == "error", frame
    assert frame["error"]["type"] == "policy_denied"
    assert "not-the-internal-box" in frame["error"]["message"]
    assert len(allowed.requests) == 1
    assert denied.connections == 0


@pytest.mark.asyncio
async def test_policy_host_rules_see_the_canonical_host(tmp_path: Path) -> None:
    async with WebServer("127.0.0.2", routes={"/": reply(200, b"secret")}) as denied:
        frame = await request(tmp_path, LOOPBACK, DENY_B_POLICY, url=f"http://127.2:{denied.port}/")
    assert outcome(frame) == "policy_denied", frame
    assert denied.connections == 0


@pytest.mark.asyncio
async def test_a_redirect_the_policy_and_config_allow_is_followed(tmp_path: Path) -> None:
    async with (
        WebServer("127.0.0.3", routes={"/": reply(200, b"arrived")}) as target,
        WebServer(routes={"/": redirect(lambda: f"{target.url}/")}) as first,
    ):
        frame = await request(tmp_path, LOOPBACK, DENY_B_POLICY, url=f"{first.url}/")
    assert outcome(frame) == "success", frame
    assert frame["result"]["data"]["body"] == "arrived"


@pytest.mark.asyncio
async def test_a_redirect_to_another_host_does_not_carry_credentials(tmp_path: Path) -> None:
    async with (
        WebServer("127.0.0.3", routes={"/": reply(200, b"arrived")}) as target,
        WebServer(
            routes={"/": redirect(lambda: "/same"), "/same": redirect(lambda: f"{target.url}/")}
        ) as first,
    ):
        frame = await request(
            tmp_path,
            LOOPBACK,
            url=f"{first.url}/",
            headers={"Authorization": "Bearer s3cret", "Cookie": "a=b", "X-Other": "kept"},
        )
    assert outcome(frame) == "success", frame
    assert first.requests[1].headers["authorization"] == "Bearer s3cret"  # same host: kept
    assert "authorization" not in target.requests[0].headers
    assert "cookie" not in target.requests[0].headers
    assert target.requests[0].headers["x-other"] == "kept"


# --- request headers that would change where the request goes -------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Host": "evil.example"}, id="host"),
        pytest.param({"X-Bad": "a\r\nHost: evil.example"}, id="crlf-in-value"),
        pytest.param({"Bad Name": "x"}, id="space-in-name"),
        pytest.param({"Transfer-Encoding": "chunked"}, id="transfer-encoding"),
    ],
)
@pytest.mark.asyncio
async def test_headers_that_would_change_the_request_are_invalid_input(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with WebServer(routes={"/": reply(200, b"ok")}) as web:
        frame = await request(tmp_path, LOOPBACK, url=f"{web.url}/", headers=headers)
    assert outcome(frame) == "invalid_input", frame
    assert frame["error"]["details"] == {"input": "headers"}
    assert web.connections == 0


# --- what the server answers ---------------------------------------------------------------------


def raw(data: bytes) -> Route:
    async def route(
        web: WebServer, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(data)
        await writer.drain()

    return route


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "body", "truncated"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            "abcde",
            False,
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"y" * 32 + b"\r\n0\r\n\r\n",
            "y" * 16,
            True,
            id="chunked-past-the-limit",
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", "until the end", False, id="until-eof"),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "ok",
            False,
            id="interim-100",
        ),
    ],
)
async def test_bodies_are_read_whatever_their_framing(
    tmp_path: Path, answer: bytes, body: str, truncated: bool
) -> None:
    async with WebServer(routes={"/": raw(answer)}) as web:
        frame = await request(tmp_path, {**LOOPBACK, "max_response_bytes": 16}, url=f"{web.url}/")
    assert outcome(frame) == "success", frame
    assert frame["result"]["data"]["body"] == body
    assert frame["result"]["data"]["truncated"] is truncated


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", id="body-cut-short"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", id="bad-content-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", id="huge-header"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", id="too-many-headers"),
    ],
)
async def test_a_malformed_answer_is_network_error(tmp_path: Path, answer: bytes) -> None:
    async with WebServer(routes={"/": raw(answer)}) as web:
        frame = await request(tmp_path, LOOPBACK, url=f"{web.url}/")
    assert outcome(frame) == "network_error", frame


@pytest.mark.asyncio
async def test_a_post_answered_with_303_is_followed_with_a_get(tmp_path: Path) -> None:
    async with WebServer(
        routes={"/form": redirect(lambda: "/done", 303), "/done": reply(200, b"thanks")}
    ) as web:
        frame = await request(tmp_path, LOOPBACK, url=f"{web.url}/form", method="POST", body="a=1")
    assert outcome(frame) == "success", frame
    assert frame["result"]["data"]["body"] == "thanks"
    assert [(r.method, r.target, r.body) for r in web.requests] == [
        ("POST", "/form", b"a=1"),
        ("GET", "/done", b""),
    ]


@pytest.mark.asyncio
async def test_after_ten_redirects_the_redirect_itself_is_returned(tmp_path: Path) -> None:
    async with WebServer(routes={"/loop": redirect(lambda: "/loop")}) as web:
        frame = await request(tmp_path, LOOPBACK, url=f"{web.url}/loop")
    assert outcome(frame) == "success", frame
    assert frame["result"]["data"]["status"] == 302
    assert len(web.requests) == 11


# --- the total deadline ---------------------------------------------------------------------------


@pytest.mark.parametrize("head_too", [pytest.param(False, id="body"), pytest.param(True, id="head")])
@pytest.mark.asyncio
async def test_the_total_deadline_holds_against_a_server_that_trickles(
    tmp_path: Path, head_too: bool
) -> None:
    # A byte every 0.5 s keeps any per-read timeout of 1.5 s happy for the whole 50 s.
    async with WebServer(routes={"/": trickle(interval=0.5, head_too=head_too)}) as web:
        started = time.monotonic()
        frame = await request(tmp_path, LOOPBACK, url=f"{web.url}/", timeout=1.5)
        elapsed = time.monotonic() - started
    assert outcome(frame) == "network_error", frame
    assert "timed out" in frame["result"]["error"]["message"]
    assert elapsed < timeout(4)


@pytest.mark.asyncio
async def test_the_timeout_an_agent_asks_for_is_capped_by_network_max_timeout(tmp_path: Path) -> None:
    async with WebServer(routes={"/": trickle(interval=0.5)}) as web:
        started = time.monotonic()
        frame = await request(tmp_path, {**LOOPBACK, "max_timeout": 1}, url=f"{web.url}/", timeout=600)
        elapsed = time.monotonic() - started
    assert outcome(frame) == "network_error", frame
    assert elapsed < timeout(3.5)


@pytest.mark.asyncio
async def test_the_deadline_covers_every_redirect_hop(tmp_path: Path) -> None:
    async with WebServer(
        routes={"/": redirect(lambda: "/slow"), "/slow": trickle(interval=0.5, head_too=True)}
    ) as web:
        started = time.monotonic()
        frame = await request(tmp_path, LOOPBACK, url=f"{web.url}/", timeout=1.5)
        elapsed = time.monotonic() - started
    assert outcome(frame) == "network_error", frame
    assert elapsed < timeout(4)


# --- other agents, and callers that are gone --------------------------------------------------------


@pytest.mark.asyncio
async def test_a_slow_network_request_does_not_delay_another_agents_file_read(tmp_path: Path) -> None:
    # More slow requests than the default thread pool has threads (min(32, CPUs + 4)).
    slow = min(32, (os.cpu_count() or 1) + 4) + 2
    async with (
        WebServer(routes={"/slow": trickle(interval=0.5, length=40)}) as web,
        gateway(tmp_path, LOOPBACK) as gw,
    ):
        (gw.workspace / "notes.txt").write_text("hello")
        bob = await gw.create_key("bob")
        async with gw.client() as alice, gw.client(bob) as bobs:
            inputs = {"url": f"{web.url}/slow", "timeout": 20}
            for _ in range(slow):
                await alice.send_request(
                    "capabilities.invoke", {"name": "network.http_request", "inputs": inputs}
                )
            await eventually(lambda: len(web.requests) >= 4)
            started = time.monotonic()
            frame = await bobs.invoke("filesystem.read", 10, path="notes.txt")
            elapsed = time.monotonic() - started
    assert frame["result"]["data"]["content"] == "hello", frame
    assert elapsed < timeout(1.0), f"filesystem.read took {elapsed:.2f} s behind slow requests"


@pytest.mark.asyncio
async def test_a_request_whose_caller_disconnects_is_stopped(tmp_path: Path) -> None:
    async with (
        WebServer(routes={"/slow": trickle(interval=0.2, length=1000)}) as web,
        gateway(tmp_path, LOOPBACK) as gw,
    ):
        async with gw.client() as alice:
            inputs = {"url": f"{web.url}/slow", "timeout": 60}
            await alice.send_request(
                "capabilities.invoke", {"name": "network.http_request", "inputs": inputs}
            )
            await eventually(lambda: len(web.requests) == 1)
        # alice is gone: her request must let go of the server's connection, not read on for 200 s.
        await asyncio.wait_for(web.gone.wait(), timeout(3))


# --- HTTPS -------------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path
    sni: list[str | None] = field(default_factory=list)


def _make_certs(directory: Path, names: str) -> Certs:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca",
        *ca_extensions)  # fmt: skip
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=leaf")
    (directory / "ext.cnf").write_text(
        f"subjectAltName={names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return Certs(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key")


def _server_tls(certs: Certs) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert, certs.key)

    def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        certs.sni.append(name)

    context.sni_callback = record_sni
    return context


@pytest.mark.parametrize(
    ("trusted", "host", "expected"),
    [
        pytest.param(True, "localhost", "success", id="trusted-name-matches"),
        pytest.param(False, "localhost", "network_error", id="untrusted-ca"),
        pytest.param(True, "127.0.0.1", "network_error", id="trusted-name-does-not-match"),
    ],
)
@pytest.mark.asyncio
async def test_https_checks_the_certificate_against_the_url_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: bool, host: str, expected: str
) -> None:
    certs = _make_certs(tmp_path, "DNS:localhost")
    if trusted:
        client_tls = ssl.create_default_context(cafile=str(certs.ca))
        monkeypatch.setattr(network, "tls_context", lambda: client_tls)
    config = {"allow_addresses": ["127.0.0.0/8", "::1/128"]}
    async with WebServer(routes={"/": reply(200, b"over tls")}, tls=_server_tls(certs)) as web:
        frame = await request(tmp_path, config, url=f"https://{host}:{web.port}/")
    assert outcome(frame) == expected, frame
    if expected == "success":
        assert frame["result"]["data"]["body"] == "over tls"
        assert certs.sni == ["localhost"]
        assert web.requests[0].headers["host"] == f"localhost:{web.port}"
