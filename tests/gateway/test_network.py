"""network.http_request: any HTTP status is a success; host rules and size caps apply."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kruxos_gateway.capabilities.network import host_allowed

from .support import make_config, running_gateway


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_address[1]
        routes = {
            "/text": (200, b"hello", {}),
            "/binary": (200, b"\xff\xfe\x00", {}),
            "/big": (200, b"x" * 1000, {}),
            "/missing": (404, b"no", {}),
            "/redirect-other-host": (302, b"", {"Location": f"http://localhost:{port}/text"}),
            "/redirect-same-host": (302, b"", {"Location": "/text"}),
        }
        status, body, headers = routes.get(self.path, (500, b"?", {}))
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), "X-Test": "yes", **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = self.headers.get("X-Echo", "").encode() + b":" + body
        self.send_response(201)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    """A local HTTP server; yields its base URL on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# The test server is on loopback, which network.http_request refuses unless the operator allows it.
LOOPBACK = {"allow_addresses": ["127.0.0.0/8"]}


async def call(
    tmp_path: Path, network: dict[str, object] | None = None, **inputs: object
) -> dict[str, object]:
    async with (
        running_gateway(make_config(tmp_path, network={**LOOPBACK, **(network or {})})) as gateway,
        gateway.client() as client,
    ):
        return await client.result("network.http_request", **inputs)


@pytest.mark.asyncio
async def test_a_get_returns_status_headers_and_text_body(tmp_path: Path, web: str) -> None:
    result = await call(tmp_path, url=f"{web}/text")
    assert result["success"] is True
    data = result["data"]
    assert data["status"] == 200
    assert data["body"] == "hello"
    assert data["body_encoding"] == "utf-8"
    assert data["headers"]["X-Test"] == "yes"
    assert data["truncated"] is False


@pytest.mark.asyncio
async def test_an_http_error_status_is_still_a_successful_invocation(tmp_path: Path, web: str) -> None:
    result = await call(tmp_path, url=f"{web}/missing")
    assert result["success"] is True
    assert result["data"]["status"] == 404


@pytest.mark.asyncio
async def test_a_post_sends_headers_and_body(tmp_path: Path, web: str) -> None:
    result = await call(tmp_path, url=f"{web}/echo", method="POST", headers={"X-Echo": "hi"}, body="payload")
    assert result["data"]["status"] == 201
    assert result["data"]["body"] == "hi:payload"


@pytest.mark.asyncio
async def test_a_body_that_is_not_utf8_comes_back_as_base64(tmp_path: Path, web: str) -> None:
    data = (await call(tmp_path, url=f"{web}/binary"))["data"]
    assert data["body_encoding"] == "base64"
    assert data["body"] == "//4A"


@pytest.mark.asyncio
async def test_a_body_past_the_limit_is_truncated(tmp_path: Path, web: str) -> None:
    data = (await call(tmp_path, {"max_response_bytes": 10}, url=f"{web}/big"))["data"]
    assert data["body"] == "x" * 10
    assert data["truncated"] is True


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("network", "path"),
    [
        pytest.param({"allow_hosts": ["example.com"]}, "/text", id="not-on-allow-list"),
        pytest.param({"deny_hosts": ["127.0.0.1"]}, "/text", id="on-deny-list"),
        pytest.param({"allow_hosts": ["127.0.0.1"]}, "/redirect-other-host", id="redirect-to-other-host"),
    ],
)
async def test_hosts_outside_the_rules_are_host_not_allowed(
    tmp_path: Path, web: str, network: dict[str, object], path: str
) -> None:
    result = await call(tmp_path, network, url=f"{web}{path}")
    assert result["success"] is False
    assert result["error"]["type"] == "host_not_allowed"


@pytest.mark.asyncio
async def test_a_redirect_to_an_allowed_host_is_followed(tmp_path: Path, web: str) -> None:
    result = await call(tmp_path, {"allow_hosts": ["127.0.0.1"]}, url=f"{web}/redirect-same-host")
    assert result["data"]["body"] == "hello"


@pytest.mark.asyncio
async def test_a_connection_failure_is_network_error(tmp_path: Path) -> None:
    result = await call(tmp_path, url="http://127.0.0.1:1/", timeout=5)
    assert result["success"] is False
    assert result["error"]["type"] == "network_error"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url", [pytest.param("ftp://example.com/", id="ftp"), pytest.param("example.com", id="bare")]
)
async def test_only_http_and_https_urls_are_accepted(tmp_path: Path, url: str) -> None:
    async with running_gateway(make_config(tmp_path)) as gateway, gateway.client() as client:
        frame = await client.invoke("network.http_request", url=url)
    assert frame["error"]["type"] == "invalid_input"
    assert frame["error"]["details"] == {"input": "url"}


@pytest.mark.parametrize(
    ("host", "allow", "deny", "allowed"),
    [
        pytest.param("api.example.com", [], [], True, id="empty-allow-list-allows-all"),
        pytest.param("api.example.com", ["*.example.com"], [], True, id="wildcard-matches-subdomain"),
        pytest.param("a.b.example.com", ["*.example.com"], [], True, id="wildcard-matches-deep-subdomain"),
        pytest.param("example.com", ["*.example.com"], [], False, id="wildcard-not-the-apex"),
        pytest.param("badexample.com", ["*.example.com"], [], False, id="wildcard-not-a-suffix-lookalike"),
        pytest.param("API.Example.COM", ["api.example.com"], [], True, id="case-insensitive"),
        pytest.param("evil.example.com", ["*.example.com"], ["evil.example.com"], False, id="deny-wins"),
        pytest.param("other.org", ["*.example.com"], [], False, id="not-listed"),
    ],
)
def test_host_rules(host: str, allow: list[str], deny: list[str], allowed: bool) -> None:
    assert host_allowed(host, allow, deny) is allowed
