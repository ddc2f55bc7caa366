"""``network.http_request``: one HTTP(S) request, checked before it connects, made on the event loop.

Any HTTP status is a successful invocation (check ``status``); a refused host or address is
``host_not_allowed``; a connection failure, a malformed answer or the deadline is ``network_error``.

Each hop (the URL, then every redirect) goes through the same steps (docs/gateway.md, the notes
on ``network.http_request``):

1. **Canonical URL.** Parsed once: scheme http/https, no user info, a host that is not
   percent-encoded, names IDNA-encoded and lower-cased without the trailing dot, numeric IPv4 in
   every form the C resolver takes (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``0``)
   turned into the dotted quad it denotes, IPv4-mapped IPv6 into its IPv4 address. What is checked
   below is exactly this host, and the Host header, SNI and certificate check use it too.
2. **Host rules** (``network.allow_hosts``/``deny_hosts``) on that host, then **the policy** for a
   redirect hop, or for the first hop when canonicalising changed the host the policy saw.
3. **Addresses.** The name is resolved (getaddrinfo in a small pool of its own; IP literals need no
   lookup) and *every* address is checked: ``deny_hosts`` addresses/CIDRs, then special-purpose
   ranges and this machine's own addresses, refused unless in ``network.allow_addresses``.
4. **Connect** a socket to one of the checked addresses (no second resolution) and speak HTTP/1.1
   on asyncio streams: no thread is held, and cancelling the invocation closes the connection.

One deadline (``timeout``, capped by ``network.max_timeout``) covers all hops, lookups, connects,
TLS handshakes and reading the body.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import functools
import ipaddress
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import Field

from .._version import __version__
from ..config import NetworkConfig, canonical_network
from ..core.models import CapabilityDefinition, OutputSpec
from ..errors import HostNotAllowed, InvalidInput, NetworkError
from .base import Capability, Context
from .inputs import Inputs, declared

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
METHODS: tuple[str, ...] = get_args(Method)
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
# Lookups run here, never in the default thread pool that file operations use.
RESOLVER_THREADS = 4
MAX_HEADER_LINE = 65_536
MAX_HEADERS = 100

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# --- 1. the canonical URL -------------------------------------------------------------------------


class BadURL(ValueError):
    """A URL that is not one canonical http(s) URL; the message says why."""


@dataclass(frozen=True)
class Target:
    """One canonical URL: what is checked is what is connected to."""

    scheme: str
    host: str  # IDNA name, dotted-quad IPv4 or compressed IPv6 (no brackets)
    port: int
    path: str  # the request target: path and query, at least "/"
    ip: IPAddress | None  # set when the host is an IP literal

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_IPV4_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")
# Characters sent as they are in a request target; anything else (non-ASCII) is percent-encoded.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def parse_url(url: str) -> Target:
    """The canonical form of ``url``; raises ``BadURL``."""
    text = url.strip()
    if _CONTROL_OR_SPACE.search(text):
        raise BadURL("contains a space or a control character")
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise BadURL(f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadURL("must be an http or https URL")
    netloc = parts.netloc
    if "@" in netloc:
        raise BadURL("must not contain a user name or password (send an Authorization header)")
    if netloc.startswith("["):
        inner, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BadURL("has a malformed [IPv6] host")
        host_text, port_text = inner, rest[1:]
    else:
        host_text, _, port_text = netloc.partition(":")
    if port_text and (not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536):
        raise BadURL(f"has an invalid port {port_text!r}")
    port = int(port_text) if port_text else (443 if parts.scheme == "https" else 80)
    host, ip = canonical_host(host_text, bracketed=netloc.startswith("["))
    path = urllib.parse.quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_TARGET_SAFE)
    return Target(parts.scheme, host, port, path, ip)


def canonical_host(text: str, *, bracketed: bool = False) -> tuple[str, IPAddress | None]:
    """The host as checked and connected to, and its address if it is an IP literal."""
    if not text:
        raise BadURL("has no host")
    if "%" in text:
        raise BadURL(f"has a percent-encoded host {text!r}: write the host without % escapes")
    if bracketed:
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise BadURL(f"has an invalid IPv6 address [{text}]") from None
        address = _effective(ip6)
        return str(address), address
    if ":" in text:
        raise BadURL("has an IPv6 host that is not in [brackets]")
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise BadURL(f"has an invalid host name {text!r}") from None
    if name.endswith("."):
        name = name[:-1]
    ip4 = _numeric_ipv4(name)
    if ip4 is not None:
        return str(ip4), ip4
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise BadURL(f"has an invalid host name {text!r}")
    return name, None


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address of a numeric IPv4 host as inet_aton reads it (1 to 4 parts, each decimal, 0-octal
    or 0x-hex; the last part fills the remaining bytes); None if the host is a name.

    As in the WHATWG URL standard, a host whose last label is a number must be such an address.
    """
    parts = host.split(".")
    if not _IPV4_PART.fullmatch(parts[-1]):
        return None
    values: list[int] = []
    for part in parts:
        if not _IPV4_PART.fullmatch(part):
            raise BadURL(f"has a host {host!r} that ends in a number but is not an IPv4 address")
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not all(c in "01234567" for c in part):
                raise BadURL(f"has an invalid octal number {part!r} in the host")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if len(values) > 4 or any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise BadURL(f"has a host {host!r} that is not a valid IPv4 address")
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _effective(address: IPAddress) -> IPAddress:
    """The address a connection really goes to: IPv4-mapped IPv6 is its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# --- 2. host rules ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network an address or CIDR pattern denotes; None for a name pattern."""
    try:
        return ipaddress.ip_network(canonical_network(pattern))
    except ValueError:
        return None


def _matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and fnmatch.fnmatchcase(host, pattern)
    if host == pattern:
        return True
    network = _network(pattern)
    if network is None:
        return False
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False


def host_allowed(host: str, allow: Sequence[str], deny: Sequence[str]) -> bool:
    """Deny wins; an empty allow list allows every host not denied. ``host`` should be canonical."""
    host = host.lower().rstrip(".")
    if any(_matches(host, p) for p in deny):
        return False
    return not allow or any(_matches(host, p) for p in allow)


def _host_not_allowed(host: str, message: str | None = None, **details: str) -> HostNotAllowed:
    return HostNotAllowed(
        message or f"requests to {host} are not allowed by the gateway's network policy",
        recovery=[
            (
                "ask_operator",
                "use an allowed host, or ask the operator to allow this one "
                "(network.allow_hosts, or network.allow_addresses for a local or private address)",
            )
        ],
        details={"host": host, **details},
    )


# --- 3. addresses -----------------------------------------------------------------------------------

# Special-purpose ranges refused unless network.allow_addresses covers them (first match names it).
_SPECIAL = [
    (ipaddress.ip_network(cidr), why)
    for cidr, why in [
        ("0.0.0.0/8", "an unspecified ('this host') address"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("169.254.0.0/16", "a link-local address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved or broadcast address"),
        ("::/128", "the unspecified address"),
        ("::1/128", "the loopback address"),
        ("::/96", "an IPv4-compatible address"),
        ("100::/64", "a discard address"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    ]
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _special(address: IPAddress) -> str | None:
    for network, why in _SPECIAL:
        if address in network:
            return why
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 or 6to4 address leads to, if it is one."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _is_own_address(address: IPAddress) -> bool:
    """Whether ``address`` is one of this machine's (the gateway's) own addresses.

    The kernel answers: a route to a local address has that address as its source. A UDP
    ``connect`` only looks the route up; no packet is sent.
    """
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(address), 9))
            source = probe.getsockname()[0]
    except OSError:
        return False
    try:
        return ipaddress.ip_address(source) == address
    except ValueError:
        return False


def address_refusal(address: IPAddress, config: NetworkConfig) -> str | None:
    """Why a request may not connect to ``address`` ("it is …"), or None if it may."""
    address = _effective(address)
    denied = [n for n in map(_network, config.deny_hosts) if n is not None]
    allowed = [n for n in map(_network, config.allow_addresses) if n is not None]
    embedded = _embedded_ipv4(address)
    for candidate in (address, embedded):
        if candidate is not None and any(candidate in n for n in denied):
            leads = "" if candidate == address else f"an address that leads to {candidate}, "
            return f"{leads}on network.deny_hosts"
    if any(address in n for n in allowed):
        return None
    why = _special(address)
    if why is not None:
        return why
    if embedded is not None and not any(embedded in n for n in allowed):
        why = _special(embedded)
        if why is not None:
            return f"an address that leads to {embedded}, {why}"
    if _is_own_address(address):
        return "an address of this machine (where the gateway runs)"
    return None


_resolver_pool: ThreadPoolExecutor | None = None


def _resolver() -> ThreadPoolExecutor:
    global _resolver_pool
    if _resolver_pool is None:
        _resolver_pool = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="kruxos-resolve")
    return _resolver_pool


async def _addresses(target: Target) -> list[IPAddress]:
    """Every address ``target`` resolves to, in getaddrinfo's order."""
    if target.ip is not None:
        return [target.ip]
    lookup = functools.partial(
        socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    try:
        infos = await asyncio.get_running_loop().run_in_executor(_resolver(), lookup)
    except socket.gaierror as exc:
        raise _Failed(f"cannot resolve {target.host}: {exc.strerror}") from None
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = _effective(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]))
            if address not in found:
                found.append(address)
    if not found:
        raise _Failed(f"{target.host} has no IPv4 or IPv6 address")
    return found


# --- 4. HTTP/1.1 on asyncio streams ---------------------------------------------------------------


class _Failed(Exception):
    """The request failed on the network side: becomes ``network_error``."""


@dataclass
class _Response:
    status: int
    headers: dict[str, str]  # as sent (last value of a repeated name); what the agent sees
    fields: dict[str, str]  # lower-case names, for framing and redirects
    body: bytes
    truncated: bool


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every HTTPS request: the system's CAs, certificate checked against the host."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _connect(
    target: Target, addresses: list[IPAddress]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of ``addresses`` that answers (all of them checked already)."""
    loop = asyncio.get_running_loop()
    failure = "no address to connect to"
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (str(address), target.port))
        except OSError as exc:
            sock.close()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            failure = f"cannot connect to {address} port {target.port}: {reason}"
            continue
        except BaseException:
            sock.close()
            raise
        try:
            if target.scheme == "https":
                return await asyncio.open_connection(
                    sock=sock, ssl=tls_context(), server_hostname=target.host, limit=MAX_HEADER_LINE
                )
            return await asyncio.open_connection(sock=sock, limit=MAX_HEADER_LINE)
        except ssl.SSLError as exc:
            sock.close()
            raise _Failed(f"TLS with {target.host} failed: {_tls_failure(exc)}") from None
        except OSError as exc:
            sock.close()
            raise _Failed(f"connection to {address} port {target.port} failed: {exc}") from None
        except BaseException:
            sock.close()
            raise
    raise _Failed(failure)


def _tls_failure(exc: ssl.SSLError) -> str:
    verify = getattr(exc, "verify_message", None)  # ssl.SSLCertVerificationError
    return f"certificate verify failed: {verify}" if verify else str(exc.reason or exc)


def _request_head(target: Target, method: str, headers: dict[str, str], body: bytes | None) -> bytes:
    given = {name.lower() for name in headers}
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.netloc}"]
    defaults = {"User-Agent": f"kruxos-gateway/{__version__}", "Accept-Encoding": "identity"}
    if body is not None:
        defaults["Content-Type"] = "application/x-www-form-urlencoded"
    lines += [f"{name}: {value}" for name, value in defaults.items() if name.lower() not in given]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readline()
    except ValueError:  # longer than the stream's limit
        raise _Failed("a line of the response is too long") from None
    if not line.endswith(b"\n"):
        raise _Failed("the connection closed in the middle of the response")
    return line.rstrip(b"\r\n")


_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: .*)?")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, str]]:
    while True:
        match = _STATUS_LINE.fullmatch(await _line(reader))
        if match is None:
            raise _Failed("the server did not answer with HTTP/1.x")
        status = int(match[1])
        headers: dict[str, str] = {}
        fields: dict[str, str] = {}
        last = ""
        for _ in range(MAX_HEADERS + 1):
            line = (await _line(reader)).decode("latin-1")
            if not line:
                break
            if line[0] in " \t" and last:  # an obsolete folded continuation line
                headers[last] = f"{headers[last]} {line.strip()}"
                fields[last.lower()] = headers[last]
                continue
            name, colon, value = line.partition(":")
            if colon and name.strip():
                last = name.strip()
                headers[last] = fields[last.lower()] = value.strip()
        else:
            raise _Failed(f"the response has more than {MAX_HEADERS} header lines")
        if status < 100 or status >= 200 or status == 101:
            return status, headers, fields
        # 100 Continue, 103 Early Hints, …: an interim answer, the real one follows.


async def _read_body(
    reader: asyncio.StreamReader, method: str, status: int, fields: dict[str, str], cap: int
) -> bytes:
    """At most ``cap`` bytes of the body."""
    if method == "HEAD" or status in (101, 204, 304):
        return b""
    coding = fields.get("transfer-encoding", "").lower()
    if coding.rsplit(",", 1)[-1].strip() == "chunked":
        return await _read_chunked(reader, cap)
    if "transfer-encoding" not in fields and "content-length" in fields:
        lengths = {v.strip() for v in fields["content-length"].split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise _Failed(f"the response has an invalid Content-Length {fields['content-length']!r}")
        wanted = min(int(lengths.pop()), cap)
        try:
            return await reader.readexactly(wanted)
        except asyncio.IncompleteReadError:
            raise _Failed("the connection closed before the end of the body") from None
    body = bytearray()
    while len(body) < cap:
        chunk = await reader.read(min(65_536, cap - len(body)))
        if not chunk:
            break
        body += chunk
    return bytes(body)


_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


async def _read_chunked(reader: asyncio.StreamReader, cap: int) -> bytes:
    body = bytearray()
    while len(body) < cap:
        size_text = (await _line(reader)).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _Failed("the response has a malformed chunk")
        size = int(size_text, 16)
        if size == 0:
            break
        take = min(size, cap - len(body))
        try:
            body += await reader.readexactly(take)
        except asyncio.IncompleteReadError:
            raise _Failed("the connection closed before the end of the body") from None
        if take < size:
            break
        await _line(reader)
    return bytes(body)


async def _exchange(
    target: Target,
    addresses: list[IPAddress],
    method: str,
    headers: dict[str, str],
    body: bytes | None,
    cap: int,
    follow: bool,
) -> _Response:
    reader, writer = await _connect(target, addresses)
    try:
        writer.write(_request_head(target, method, headers, body) + (body or b""))
        await writer.drain()
        status, response_headers, fields = await _read_head(reader)
        if follow and status in REDIRECTS and "location" in fields:
            raw = b""  # not read: the redirect is followed
        else:
            raw = await _read_body(reader, method, status, fields, cap + 1)
    except ssl.SSLError as exc:
        raise _Failed(f"TLS with {target.host} failed: {_tls_failure(exc)}") from None
    except (OSError, EOFError) as exc:
        raise _Failed(str(exc) or type(exc).__name__) from None
    finally:
        writer.transport.abort()  # Connection: close; nothing more to read, nothing to wait for
    return _Response(status, response_headers, fields, raw[:cap], len(raw) > cap)


# --- the capability -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Set by the gateway from the URL and the body: an agent's value would change where the request
# goes or how it is framed.
_RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection")
# Not carried to another origin by a redirect.
_CREDENTIALS = ("authorization", "proxy-authorization", "cookie")


def _checked_headers(headers: dict[str, Any]) -> dict[str, str]:
    def bad(message: str) -> InvalidInput:
        return InvalidInput(
            "headers", message, 'pass headers as {"Name": "value"}, e.g. {"Accept": "text/html"}'
        )

    for name, value in headers.items():
        if not isinstance(value, str):
            raise bad(f"header {name!r} must be a string")
        if not _TOKEN.fullmatch(name):
            raise bad(f"header name {name!r} is not a valid HTTP header name")
        if name.lower() in _RESERVED_HEADERS:
            raise bad(f"header {name!r} is set by the gateway (from the url and body); remove it")
        if any(c in value for c in "\r\n\x00"):
            raise bad(f"header {name!r} must not contain line breaks or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise bad(
                f"header {name!r} must be ISO-8859-1 text (percent- or base64-encode the rest)"
            ) from None
    return dict(headers)


def _network_error(method: str, url: str, failure: str) -> NetworkError:
    return NetworkError(
        f"{method} {url} failed: {failure}",
        recovery=[("retry_later", "check the URL; retry later if the host is temporarily unreachable")],
        details={"url": url},
    )


async def _checked_addresses(target: Target, config: NetworkConfig) -> list[IPAddress]:
    """The addresses of ``target`` if every one of them passes the address rules."""
    addresses = await _addresses(target)
    for address in addresses:
        why = address_refusal(address, config)
        if why is not None:
            shown = target.host if target.ip is not None else f"{target.host} ({address})"
            raise _host_not_allowed(
                target.host,
                f"requests to {shown} are not allowed: it is {why}",
                address=str(address),
                reason=why,
            )
    return addresses


async def _fetch(
    ctx: Context, inputs: dict[str, Any], target: Target, headers: dict[str, str], body: bytes | None
) -> dict[str, Any]:
    config = ctx.config.network
    method: str = inputs["method"]
    redirects = 0
    while True:
        addresses = await _checked_addresses(target, config)
        follow = redirects < MAX_REDIRECTS
        response = await _exchange(
            target, addresses, method, headers, body, config.max_response_bytes, follow
        )
        location = response.fields.get("location")
        if not follow or response.status not in REDIRECTS or location is None:
            break
        redirects += 1
        location = location.encode("latin-1").decode("utf-8", "replace")
        try:
            hop = parse_url(urllib.parse.urljoin(target.url, location))
        except (BadURL, ValueError) as exc:
            raise _host_not_allowed(
                location, f"the redirect to {location!r} was not followed: the URL {exc}"
            ) from None
        if (response.status == 303 and method != "HEAD") or (
            response.status in (301, 302) and method == "POST"
        ):
            method, body = "GET", None
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if hop.origin != target.origin:
            headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIALS}
        target = hop
        hop_inputs = {
            **inputs,
            "url": target.url,
            "method": method,
            "headers": headers or None,
            "body": inputs["body"] if body is not None else None,
        }
        await _check_host(ctx, target, hop_inputs)
    data = response.body
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return {
        "status": response.status,
        "headers": response.headers,
        "body": text,
        "body_encoding": encoding,
        "truncated": response.truncated,
    }


async def _check_host(ctx: Context, target: Target, hop_inputs: dict[str, Any] | None) -> None:
    """Host rules on ``target``; then the policy on ``hop_inputs`` (None: the policy has seen them)."""
    config = ctx.config.network
    if not host_allowed(target.host, config.allow_hosts, config.deny_hosts):
        raise _host_not_allowed(target.host)
    if hop_inputs is not None:
        await ctx.check_policy(DEFINITION, hop_inputs)


async def _http_request(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    config = ctx.config.network
    url: str = inputs["url"]
    try:
        target = parse_url(url)
    except BadURL as exc:
        raise InvalidInput(
            "url", f"input 'url' {exc}, got {url!r}", 'pass e.g. "https://example.com/"'
        ) from None
    headers = _checked_headers(inputs["headers"] or {})
    timeout = inputs["timeout"] if inputs["timeout"] is not None else config.default_timeout
    if not timeout > 0:  # also refuses NaN
        raise InvalidInput(
            "timeout", "input 'timeout' must be positive", f"pass seconds, at most {config.max_timeout}"
        )
    timeout = min(float(timeout), config.max_timeout)
    body = inputs["body"].encode("utf-8") if inputs["body"] is not None else None
    # The policy saw the URL as the agent wrote it; ask again if its host is not the canonical one.
    seen = _policy_host(url)
    await _check_host(ctx, target, None if seen == target.host else {**inputs, "url": target.url})
    failure: str | None = None
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(ctx, inputs, target, headers, body)
    except TimeoutError:
        failure = f"timed out after {timeout:g} s"
    except _Failed as exc:
        failure = str(exc)
    # Raised outside the handler: no exception chain keeps the failed connection alive.
    raise _network_error(inputs["method"], url, failure)


def _policy_host(url: str) -> str | None:
    """The host the policy's ``{host: …}`` matchers saw for ``url``."""
    try:
        return urllib.parse.urlsplit(url.strip()).hostname
    except ValueError:
        return None


class RequestInputs(Inputs):
    url: str = Field(description="An http:// or https:// URL.")
    method: Method = Field("GET", description="The HTTP method: " + ", ".join(METHODS) + " (default GET).")
    headers: dict[str, Any] | None = Field(None, description="Request headers (strings).")
    body: str | None = Field(None, description="The request body, sent as UTF-8.")
    timeout: int | float | None = Field(
        None,
        description="Seconds for the whole request, redirects included (default and cap from the "
        "gateway configuration).",
    )


DEFINITION = CapabilityDefinition(
    name="network.http_request",
    category="network",
    tags=["network"],
    purpose="Make one HTTP or HTTPS request and return the status, headers and body.",
    when_to_use=(
        "When you need data from a web API or page. Any HTTP status is a successful invocation: "
        "check status. Hosts may be restricted by the operator."
    ),
    inputs=declared(RequestInputs),
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
)

CAPABILITIES = [Capability(DEFINITION, _http_request, RequestInputs)]
