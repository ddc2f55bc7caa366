"""email.send through a real gateway to a real SMTP server (aiosmtpd on loopback): buffered, then
sent once; refused, retried and failed as the server answers; never showing the password."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from kruxos_gateway import compose
from kruxos_gateway.config import parse_config
from kruxos_gateway.errors import ConfigError
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.proxies.email.credentials import check_credentials
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

from .email_support import (
    AIOSMTPD_WARNING,
    PASSWORD,
    USER,
    email_config,
    email_gateway,
    self_signed_certificate,
    settled,
    smtp_server,
)
from .support import timeout

pytestmark = pytest.mark.filterwarnings(AIOSMTPD_WARNING)

MESSAGE: dict[str, Any] = {"to": "ana@example.com", "subject": "Lunch", "body": "At noon?\n"}


@pytest.mark.asyncio
async def test_a_send_arrives_once_after_its_window(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        data = await client.data("email.send", **MESSAGE, cc=["Bo <bo@example.com>"])
        assert data["state"] == "pending"
        assert data["write_id"].startswith("wr_")
        assert data["buffer_until"].endswith("Z")
        assert inbox.received == []  # the window has not ended
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("sent", 1)
        await asyncio.sleep(0.3)
        assert len(inbox.received) == 1
        got = inbox.received[0]
        assert got.mail_from == "agent@kruxos.test"
        assert got.rcpt_tos == ["ana@example.com", "bo@example.com"]
        assert got.message["Message-ID"] == data["message_id"]
        assert (got.message["Subject"], got.message["To"]) == ("Lunch", "ana@example.com")
        assert got.message.get_payload(decode=True) == b"At noon?\r\n"  # as SMTP carries it
        assert inbox.logins == [(USER.encode(), PASSWORD.encode())]


@pytest.mark.asyncio
async def test_the_audit_log_has_the_send_and_its_delivery(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        inbox.drop_after_data = True
        data = await client.data("email.send", **MESSAGE)
        await settled(gw.parts, data["write_id"])
        await gw.db.flush()
        records = await gw.db.run(functools.partial(store.tail_audit, limit=10))
    rows = [(r.key_name, r.session_id, r.capability, r.outcome) for r in records]
    assert rows[0][2:] == ("email.send", "success")  # the invocation that buffered it
    assert rows[-1] == ("alice", "proxy:email", "email.send", "unknown")  # what became of it
    assert records[-1].invocation_id == data["write_id"]


@pytest.mark.asyncio
async def test_a_send_cancelled_in_its_window_never_arrives(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        data = await client.data("email.send", **MESSAGE)
        cancelled = await client.data("proxy.cancel_write", write_id=data["write_id"])
        assert cancelled["write"]["state"] == "cancelled"
        await asyncio.sleep(0.6)  # twice the window
        assert inbox.received == []
        listed = await client.data("proxy.list_writes")
        assert [(w["write_id"], w["state"]) for w in listed["writes"]] == [(data["write_id"], "cancelled")]


@pytest.mark.asyncio
async def test_a_sent_write_cannot_be_cancelled_and_the_error_names_its_state(tmp_path: Path) -> None:
    async with smtp_server() as (_, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        data = await client.data("email.send", **MESSAGE)
        await settled(gw.parts, data["write_id"])
        result = await client.result("proxy.cancel_write", write_id=data["write_id"])
        assert not result["success"]
        assert result["error"]["type"] == "execution_failed"
        assert "it is sent" in result["error"]["message"]
        assert result["error"]["details"]["state"] == "sent"


@pytest.mark.asyncio
async def test_another_keys_write_is_not_found(tmp_path: Path) -> None:
    async with smtp_server() as (_, port), email_gateway(tmp_path, port, send_window=30) as gw:
        async with gw.client() as alice:
            data = await alice.data("email.send", **MESSAGE)
        async with gw.client(await gw.create_key("bob")) as bob:
            result = await bob.result("proxy.cancel_write", write_id=data["write_id"])
            assert result["error"]["type"] == "not_found"
            assert (await bob.data("proxy.list_writes"))["writes"] == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hi\r\nBcc: everyone@example.com"),
        ("subject", "Hi\nX-Evil: 1"),
        ("to", "ana@example.com\r\nBcc: everyone@example.com"),
        ("to", ["ana@example.com", "bo@example.com\nBcc: x@example.com"]),
        ("cc", "bo@example.com\rBcc: x@example.com"),
        ("to", "ana@example.com, bo@example.com"),
        ("to", "not an address"),
        ("to", "zoë@example.com"),
        ("subject", "bell\x07"),
    ],
    ids=[
        "subject-crlf",
        "subject-lf",
        "to-crlf",
        "to-list-lf",
        "cc-cr",
        "two-in-one",
        "no-address",
        "non-ascii",
        "control",
    ],
)
async def test_header_injection_and_bad_addresses_are_refused(
    tmp_path: Path, field: str, value: object
) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        frame = await client.invoke("email.send", **{**MESSAGE, field: value})
        assert frame["type"] == "error", frame
        assert frame["error"]["type"] == "invalid_input"
        assert frame["error"]["details"]["input"] == field
        assert (await client.data("proxy.list_writes"))["writes"] == []
        await asyncio.sleep(0.4)
        assert inbox.received == []


@pytest.mark.asyncio
async def test_too_many_recipients_are_refused(tmp_path: Path) -> None:
    async with (
        smtp_server() as (_, port),
        email_gateway(tmp_path, port, max_recipients=2) as gw,
        gw.client() as client,
    ):
        frame = await client.invoke("email.send", **{**MESSAGE, "to": ["a@x.test", "b@x.test", "c@x.test"]})
        assert frame["error"]["type"] == "invalid_input"
        assert "at most 2" in frame["error"]["message"]


@pytest.mark.asyncio
async def test_a_4xx_at_rcpt_is_retried_and_then_delivered_once(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        inbox.rcpt_replies = ["451 4.3.0 mailbox busy, try later"]
        data = await client.data("email.send", **MESSAGE)
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("sent", 2)
        assert len(inbox.received) == 1


@pytest.mark.asyncio
async def test_4xx_retries_stop_at_the_bound(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port, max_attempts=3) as gw:
        inbox.rcpt_replies = ["451 4.3.0 mailbox busy, try later"] * 10
        async with gw.client() as client:
            data = await client.data("email.send", **MESSAGE)
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("failed", 3)
        assert "gave up after 3 attempts" in (write.detail or "")
        assert "mailbox busy, try later" in (write.detail or "")
        assert inbox.received == []


@pytest.mark.asyncio
async def test_a_5xx_fails_at_once_with_the_servers_words(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        inbox.rcpt_replies = ["550 5.1.1 no such mailbox here"] * 5
        data = await client.data("email.send", **MESSAGE)
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("failed", 1)
        listed = (await client.data("proxy.list_writes"))["writes"][0]
        assert "550 5.1.1 no such mailbox here" in listed["detail"]
        assert inbox.received == []


@pytest.mark.asyncio
async def test_a_connection_dropped_after_data_began_is_unknown_and_never_resent(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port) as gw, gw.client() as client:
        inbox.drop_after_data = True
        data = await client.data("email.send", **MESSAGE)
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("unknown", 1)
        await asyncio.sleep(0.5)  # longer than several retry delays
        assert len(inbox.received) == 1
        assert (await client.result("proxy.cancel_write", write_id=data["write_id"]))["error"]["details"] == {
            "write_id": data["write_id"],
            "state": "unknown",
        }


@pytest.mark.asyncio
async def test_a_refused_connection_is_retried(tmp_path: Path) -> None:
    async with smtp_server() as (_, port):
        pass  # the port is free again: connections to it are refused
    async with email_gateway(tmp_path, port, max_attempts=2) as gw, gw.client() as client:
        data = await client.data("email.send", **MESSAGE)
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("failed", 2)
        assert "ConnectionRefusedError" in (write.detail or "")


@pytest.mark.asyncio
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_tls_sends_when_the_certificate_is_trusted(
    tmp_path: Path, tls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # the only authority the client trusts
    async with (
        smtp_server(tls, certificate) as (inbox, port),
        email_gateway(tmp_path, port, tls=tls) as gw,
        gw.client() as client,
    ):
        data = await client.data("email.send", **MESSAGE)
        assert (await settled(gw.parts, data["write_id"])).state == "sent"
        assert inbox.logins == [(USER.encode(), PASSWORD.encode())]  # AUTH went over TLS
        assert inbox.message_ids() == [data["message_id"]]


@pytest.mark.asyncio
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_tls_refuses_a_certificate_nobody_vouches_for(tmp_path: Path, tls: str) -> None:
    certificate = self_signed_certificate(tmp_path)
    async with (
        smtp_server(tls, certificate) as (inbox, port),
        email_gateway(tmp_path, port, tls=tls) as gw,
        gw.client() as client,
    ):
        data = await client.data("email.send", **MESSAGE)
        write = await settled(gw.parts, data["write_id"])
        assert (write.state, write.attempts) == ("failed", 1)
        assert "certificate was refused" in (write.detail or "")
        assert inbox.logins == []
        assert inbox.received == []


RECIPIENT_POLICY = """
version: 1
default: allow
rules:
  - name: no-mail-to-competitors
    decision: deny
    capability: email.send
    inputs: {to: {regex: '@rival\\.example'}}
    why: never write to a competitor
"""


@pytest.mark.asyncio
async def test_a_recipient_rule_of_the_policy_denies_the_send(tmp_path: Path) -> None:
    async with (
        smtp_server() as (inbox, port),
        email_gateway(tmp_path, port, policy=RECIPIENT_POLICY) as gw,
        gw.client() as client,
    ):
        frame = await client.invoke(
            "email.send", **{**MESSAGE, "to": ["ana@example.com", "ceo@rival.example"]}
        )
        assert frame["type"] == "error", frame
        assert (frame["error"]["type"], frame["error"]["rule"]) == ("policy_denied", "no-mail-to-competitors")
        assert (await client.data("proxy.list_writes"))["writes"] == []
        allowed = await client.data("email.send", **MESSAGE)
        assert (await settled(gw.parts, allowed["write_id"])).state == "sent"
        assert len(inbox.received) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("password", [PASSWORD, "Wrong-Password-0xC0FFEE"], ids=["right", "wrong"])
async def test_the_password_never_appears_in_results_errors_logs_or_the_database(
    tmp_path: Path, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        smtp_server() as (_, port),
        email_gateway(tmp_path, port, password=password) as gw,
        gw.client() as client,
    ):
        frames = [await client.invoke("email.send", **MESSAGE)]
        write_id = frames[0]["result"]["data"]["write_id"]
        write = await settled(gw.parts, write_id)
        assert write.state == ("sent" if password == PASSWORD else "failed")
        if password != PASSWORD:
            assert "535" in (write.detail or "")  # the server's words
        frames.append(await client.invoke("proxy.list_writes"))
        frames.append(await client.invoke("proxy.cancel_write", write_id=write_id))
        frames.append(await client.request("capabilities.list"))
        await gw.db.flush()
    dump = "\n".join(sqlite3.connect(gw.config.db_path).iterdump())
    for text in [*map(str, frames), dump, caplog.text]:
        assert password not in text


@pytest.mark.asyncio
async def test_without_accounts_there_are_no_email_capabilities(tmp_path: Path) -> None:
    config = parse_config(f"state_dir: {tmp_path}\nworkspace: {{root: {tmp_path}}}\n")
    names = {
        d.name
        for d in compose.build(
            config, Database(config.db_path), parse_policy("version: 1\ndefault: deny\n", "p")
        ).registry.list()
    }
    assert not {n for n in names if n.startswith(("email.", "proxy."))}


def test_a_password_file_others_can_read_is_refused_at_start(tmp_path: Path) -> None:
    config = email_config(tmp_path, 2525)
    assert config.email.accounts[0].password_file is not None
    config.email.accounts[0].password_file.chmod(0o640)
    with pytest.raises(ConfigError, match=r"password_file: .* readable by others .* chmod 600") as caught:
        check_credentials(config.email)
    assert "\n" not in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_daemon_refuses_to_start_with_a_password_file_others_can_read(tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    secret = tmp_path / "work.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 0}}\nstate_dir: {tmp_path / 'state'}\n"
        f"workspace: {{root: {tmp_path / 'workspace'}}}\n"
        "email:\n  accounts:\n    - {name: work, address: me@example.com, password_file: "
        f"{secret}, smtp: {{host: 127.0.0.1, port: 2525, tls: none, user: me}}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "kruxos_gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "email.accounts[work].password_file" in result.stderr
    assert "(mode 0644); run chmod 600" in result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize(
    ("smtp", "problem"),
    [
        ("{host: smtp.example.com, tls: none}", "tls: none is allowed for a loopback host only"),
        ("{host: smtp.example.com, tls: ssl}", "email.accounts.0.smtp.tls"),
        ("{host: smtp.example.com, prot: 25}", "email.accounts.0.smtp.prot: unknown key"),
    ],
    ids=["plain-off-loopback", "bad-tls", "unknown-key"],
)
def test_bad_accounts_are_refused_with_one_line(smtp: str, problem: str) -> None:
    text = f"email:\n  accounts:\n    - {{name: work, address: me@example.com, smtp: {smtp}}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.asyncio
async def test_the_shipped_policy_asks_a_person_for_a_send_and_lets_an_agent_cancel(tmp_path: Path) -> None:
    shipped = (files("kruxos_gateway") / "default-policy.yaml").read_text(encoding="utf-8")
    async with (
        smtp_server() as (_, port),
        email_gateway(tmp_path, port, policy=shipped) as gw,
        gw.client() as client,
    ):
        frame = await client.invoke("email.send", **MESSAGE)
        assert frame["error"]["type"] == "approval_required", frame
        result = await client.result("proxy.cancel_write", write_id="wr_nothing")
        assert result["error"]["type"] == "not_found"  # it ran: no approval asked
        assert (await client.data("proxy.list_writes"))["writes"] == []


@pytest.mark.parametrize("address", ["me@ex@ample.com", "Me <me@example.com>", "zoë@example.com", "me"])
def test_an_account_address_is_one_plain_ascii_address(address: str) -> None:
    text = (
        f"email:\n  accounts:\n    - {{name: work, address: '{address}', smtp: {{host: smtp.example.com}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"email\.accounts\.0\.address"):
        parse_config(text, "gateway.yaml")


APPROVAL_POLICY = """
version: 1
default: allow
rules:
  - name: a-person-reads-outgoing-mail
    decision: require_approval
    capability: email.send
    why: mail leaves the appliance
"""


@pytest.mark.asyncio
async def test_an_approved_send_is_buffered_then_delivered_once(tmp_path: Path) -> None:
    async with (
        smtp_server() as (inbox, port),
        email_gateway(tmp_path, port, policy=APPROVAL_POLICY) as gw,
        gw.client() as client,
    ):
        frame = await client.invoke("email.send", **MESSAGE)
        assert frame["error"]["type"] == "approval_required", frame
        assert (await client.data("proxy.list_writes"))["writes"] == []  # nothing buffered yet
        await gw.parts.approvals.decide(
            frame["error"]["approval_id"], approve=True, operator="op", reason="ok"
        )
        event = await client.recv()
        assert (event["type"], event["event"]) == ("event", "approval.resolved"), event
        data = event["data"]["data"]  # the replayed email.send's result: the write it buffered
        assert data["state"] == "pending"
        assert (await settled(gw.parts, data["write_id"])).state == "sent"
        await asyncio.sleep(0.3)
        assert inbox.message_ids() == [data["message_id"]]
