"""Test support for the service proxies: a real SMTP server (aiosmtpd) on loopback port 0, and a
gateway with an email account that sends to it.

The server runs in the test's own event loop; the gateway's SMTP client runs on a worker thread
(``proxies/email/smtp.py``), so the two talk over a real TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kruxos_gateway import compose, serving
from kruxos_gateway.compose import Parts
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.proxies import buffer
from kruxos_gateway.proxies.buffer import Write
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

from .support import RunningGateway, eventually, make_config, timeout

# aiosmtpd 1.4 itself sets the deprecated Session.login_data on each successful AUTH.
AIOSMTPD_WARNING = "ignore:Session.login_data is deprecated:DeprecationWarning"
PASSWORD = "s3cret-Pa55word-for-tests"
USER = "agent"
ALLOW_ALL = "version: 1\ndefault: allow\n"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: Message


@dataclass
class Inbox:
    """What the SMTP server received, and how it misbehaves (replies queued per command)."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    drop_after_data: bool = False
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), message_from_bytes(content))
        )
        if self.drop_after_data:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()  # the whole message arrived; the reply never will
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)

    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.received]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key) that no certificate authority signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kruxos test smtp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@contextlib.asynccontextmanager
async def smtp_server(
    tls: str = "none", certificate: tuple[Path, Path] | None = None
) -> AsyncIterator[tuple[Inbox, int]]:
    """A real aiosmtpd server on 127.0.0.1, port chosen by the kernel, with AUTH: plain text
    (``none``), TLS from the first byte (``implicit``) or STARTTLS required before AUTH
    (``starttls``), with ``certificate``."""
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    context = None
    if tls != "none":
        assert certificate is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)

    def protocol() -> SMTP:
        if tls == "starttls":
            return SMTP(
                inbox,
                hostname="smtp.kruxos.test",
                authenticator=inbox.authenticate,
                tls_context=context,
                require_starttls=True,
            )
        # Plain text or implicit TLS: AUTH offered and checked (required would warn without TLS).
        return SMTP(
            inbox, hostname="smtp.kruxos.test", authenticator=inbox.authenticate, auth_require_tls=False
        )

    server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=context if tls == "implicit" else None)
    try:
        yield inbox, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def email_config(tmp_path: Path, port: int, password: str = PASSWORD, tls: str = "none", **email: Any) -> Any:
    secret = tmp_path / "smtp.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    account = {
        "name": "test",
        "address": "agent@kruxos.test",
        "smtp": {"host": "127.0.0.1", "port": port, "tls": tls, "user": USER, "timeout": 5.0},
        "password_file": secret,
    }
    settings = {"accounts": [account], "send_window": 0.3, "retry_delay": 0.05, "max_attempts": 3, **email}
    return make_config(tmp_path, email=settings)


@contextlib.asynccontextmanager
async def email_gateway(
    tmp_path: Path, port: int, policy: str = ALLOW_ALL, **settings: Any
) -> AsyncIterator[RunningGateway]:
    """A started gateway (sweepers running) on loopback whose account sends to ``port``; a restart on
    the same ``tmp_path`` keeps the database (alice's key is taken over)."""
    config = email_config(tmp_path, port, **settings)
    db = Database(config.db_path)
    db.start()
    try:
        key = await db.run(functools.partial(store.rotate_key, name="alice"))  # a restart
        if key is None:
            key = await db.run(functools.partial(store.create_key, name="alice"))
        parts = compose.build(config, db, parse_policy(policy, "test-policy.yaml"))
        await parts.start()
        transports = serving.serve(parts)
        await transports.server.start()
        try:
            yield RunningGateway(transports.server, db, config, key, parts)
        finally:
            await transports.shutdown()
            await parts.close()
    finally:
        await db.close()


async def write_of(parts: Parts, write_id: str) -> Write:
    write = await parts.db.run(functools.partial(buffer.get, write_id=write_id))
    assert write is not None
    return write


async def settled(parts: Parts, write_id: str, seconds: float = 10.0) -> Write:
    """The write once it reached a final state."""
    states: dict[str, Write] = {}

    async def poll() -> None:
        while True:
            write = await write_of(parts, write_id)
            if write.state in buffer.FINAL:
                states["final"] = write
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout(seconds))
    return states["final"]


__all__ = ["Inbox", "Received", "email_gateway", "eventually", "settled", "smtp_server", "write_of"]
