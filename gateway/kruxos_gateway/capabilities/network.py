"""``network.http_request``: one HTTP(S) request, host-filtered, size-capped, run in a worker thread.

Any HTTP status is a successful invocation (check ``status``); a host outside the allow list (or
on the deny list) is ``host_not_allowed``, also for each redirect; a connection failure or timeout
is ``network_error``.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.client import HTTPMessage
from typing import IO, Any

from ..config import NetworkConfig
from ..errors import CapabilityFailed, InvalidInput
from ..models import CapabilityDefinition, InputSpec, OutputSpec
from . import Capability, Context

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and fnmatch.fnmatchcase(host, pattern)
    return host == pattern


def host_allowed(host: str, allow: Sequence[str], deny: Sequence[str]) -> bool:
    """Deny wins; an empty allow list allows every host not denied."""
    host = host.lower().rstrip(".")
    if any(_matches(host, p) for p in deny):
        return False
    return not allow or any(_matches(host, p) for p in allow)


def _host_not_allowed(host: str) -> CapabilityFailed:
    return CapabilityFailed(
        "host_not_allowed",
        f"requests to {host} are not allowed by the gateway's network policy",
        recovery=[
            (
                "ask_operator",
                "use an allowed host, or ask the operator to add this one to network.allow_hosts",
            )
        ],
        details={"host": host},
    )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, config: NetworkConfig) -> None:
        self.config = config

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        target = urllib.parse.urlsplit(newurl)
        allowed = target.scheme in ("http", "https") and host_allowed(
            target.hostname or "", self.config.allow_hosts, self.config.deny_hosts
        )
        if not allowed:
            fp.close()  # urllib closes the redirect response only when it follows it
            raise _host_not_allowed(target.hostname or newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(
    config: NetworkConfig, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
) -> dict[str, Any]:
    # No proxies from the environment: requests go where the allow list says, and nowhere else.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _CheckedRedirects(config))
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    failure: str | None = None
    try:
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:  # 4xx/5xx: still an answer
            response = exc
        with response:
            raw = response.read(config.max_response_bytes + 1)
            status = response.status
            response_headers = {k: v for k, v in response.headers.items()}
    except CapabilityFailed:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        failure = "timed out" if isinstance(reason, socket.timeout | TimeoutError) else str(reason)
    if failure is not None:
        # Raised outside the handler: no exception chain keeps the failed socket alive.
        raise CapabilityFailed(
            "network_error",
            f"{method} {url} failed: {failure}",
            recovery=[("retry_later", "check the URL; retry later if the host is temporarily unreachable")],
            details={"url": url},
        )
    truncated = len(raw) > config.max_response_bytes
    raw = raw[: config.max_response_bytes]
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "status": status,
        "headers": response_headers,
        "body": text,
        "body_encoding": encoding,
        "truncated": truncated,
    }


async def _http_request(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    config = ctx.config.network
    url: str = inputs["url"]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            "url",
            f"input 'url' must be an http or https URL, got {url!r}",
            'pass e.g. "https://example.com/"',
        )
    headers = inputs["headers"] or {}
    for name, value in headers.items():
        if not isinstance(value, str):
            raise InvalidInput(
                "headers", f"header {name!r} must be a string", 'pass headers as {"Name": "value"}'
            )
    timeout = inputs["timeout"] if inputs["timeout"] is not None else config.default_timeout
    if not timeout > 0:  # also refuses NaN
        raise InvalidInput("timeout", "input 'timeout' must be positive", "pass a number of seconds, e.g. 30")
    if not host_allowed(parts.hostname, config.allow_hosts, config.deny_hosts):
        raise _host_not_allowed(parts.hostname)
    body = inputs["body"].encode("utf-8") if inputs["body"] is not None else None
    return await asyncio.to_thread(_fetch, config, inputs["method"], url, headers, body, float(timeout))


CAPABILITIES = [
    Capability(
        CapabilityDefinition(
            name="network.http_request",
            category="network",
            tags=["network"],
            purpose="Make one HTTP or HTTPS request and return the status, headers and body.",
            when_to_use=(
                "When you need data from a web API or page. Any HTTP status is a successful invocation: "
                "check status. Hosts may be restricted by the operator."
            ),
            inputs=[
                InputSpec(
                    name="url", type="string", required=True, description="An http:// or https:// URL."
                ),
                InputSpec(
                    name="method",
                    type="string",
                    default="GET",
                    choices=METHODS,
                    description="The HTTP method: " + ", ".join(METHODS) + " (default GET).",
                ),
                InputSpec(
                    name="headers", type="object", default=None, description="Request headers (strings)."
                ),
                InputSpec(
                    name="body", type="string", default=None, description="The request body, sent as UTF-8."
                ),
                InputSpec(
                    name="timeout",
                    type="number",
                    default=None,
                    description="Seconds to wait (default from the gateway configuration).",
                ),
            ],
            outputs=[
                OutputSpec(name="status", type="integer", description="The HTTP status code."),
                OutputSpec(name="headers", type="object", description="The response headers."),
                OutputSpec(name="body", type="string", description="The body: text, or base64 if not UTF-8."),
                OutputSpec(name="body_encoding", type="string", description='"utf-8" or "base64".'),
                OutputSpec(
                    name="truncated",
                    type="boolean",
                    description="True if the body was cut at the size limit.",
                ),
            ],
            permission_tier="network",
        ),
        _http_request,
    )
]
