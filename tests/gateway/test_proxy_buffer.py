"""The proxies' durable write buffer: cancel and send-start exclude each other, a restart delivers
what was pending exactly once, and a write caught mid-send is never sent again."""

from __future__ import annotations

import asyncio
import functools
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from kruxos_gateway.core.sessions import Caller
from kruxos_gateway.proxies import buffer
from kruxos_gateway.storage import store

from .email_support import AIOSMTPD_WARNING, email_gateway, settled, smtp_server, write_of

pytestmark = pytest.mark.filterwarnings(AIOSMTPD_WARNING)

MESSAGE: dict[str, Any] = {"to": "ana@example.com", "subject": "Report", "body": "Attached.\n"}


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return store.connect(tmp_path / "gateway.db")


def _buffered(conn: sqlite3.Connection, write_id: str = "wr_1", window: float = 0.0) -> buffer.Write:
    return buffer.buffer(
        conn,
        write_id=write_id,
        key_name="alice",
        session_id="s",
        proxy="email",
        kind="send",
        payload={"to": ["a@x.test"]},
        message_id="<1@x.test>",
        window=window,
    )


def test_a_started_write_can_no_longer_be_cancelled(conn: sqlite3.Connection) -> None:
    _buffered(conn)
    assert buffer.start(conn, "wr_1") is not None
    won, write = buffer.cancel(conn, "wr_1", "alice")
    assert not won
    assert write is not None
    assert write.state == "sending"


def test_a_cancelled_write_can_no_longer_start(conn: sqlite3.Connection) -> None:
    _buffered(conn)
    assert buffer.cancel(conn, "wr_1", "alice")[0]
    assert buffer.start(conn, "wr_1") is None
    assert buffer.due(conn) == ([], None)


def test_a_write_does_not_start_before_its_window_ends(conn: sqlite3.Connection) -> None:
    _buffered(conn, window=60)
    assert buffer.start(conn, "wr_1") is None
    assert buffer.due(conn)[0] == []


def test_another_keys_write_cannot_be_cancelled_and_is_not_shown(conn: sqlite3.Connection) -> None:
    _buffered(conn, window=60)
    assert buffer.cancel(conn, "wr_1", "bob") == (False, None)
    assert buffer.of_key(conn, "bob", 10) == []
    assert buffer.get(conn, "wr_1") is not None
    assert buffer.get(conn, "wr_1").state == "pending"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_cancels_racing_the_window_edge_end_each_in_exactly_one_of_cancelled_or_sent(
    tmp_path: Path,
) -> None:
    window, races = 0.25, 200
    async with smtp_server() as (inbox, port), email_gateway(tmp_path, port, send_window=window) as gw:
        parts = gw.parts
        caller = Caller("alice", "race")
        rng = random.Random(13)

        async def race(i: int) -> tuple[str, bool, str | None]:
            sent = await parts.pipeline.invoke(caller, "email.send", {**MESSAGE, "subject": f"race {i}"})
            assert sent.success, sent
            assert sent.data is not None
            write_id = sent.data["write_id"]
            await asyncio.sleep(window + rng.uniform(-0.1, 0.3))  # around the edge of the window
            cancel = await parts.pipeline.invoke(caller, "proxy.cancel_write", {"write_id": write_id})
            lost_to = None if cancel.success or cancel.error is None else cancel.error.details["state"]
            return write_id, cancel.success, lost_to

        outcomes = await asyncio.gather(*(race(i) for i in range(races)))
        finals = {w: await settled(parts, w) for w, _, _ in outcomes}
        for write_id, cancel_won, lost_to in outcomes:
            assert finals[write_id].state == ("cancelled" if cancel_won else "sent"), finals[write_id]
            assert lost_to in ((None,) if cancel_won else ("sending", "sent"))  # the error names it
        sent_ids = sorted(w.message_id for w in finals.values() if w.state == "sent")
        await asyncio.sleep(0.3)
        assert sorted(inbox.message_ids()) == sent_ids  # every sent one once, no cancelled one
        states = {w.state for w in finals.values()}
        assert states == {"cancelled", "sent"}, "the race should have gone both ways"


@pytest.mark.asyncio
async def test_pending_writes_survive_a_restart_and_are_delivered_exactly_once(tmp_path: Path) -> None:
    async with smtp_server() as (inbox, port):
        async with email_gateway(tmp_path, port, send_window=1.0) as gw, gw.client() as client:
            ids = [(await client.data("email.send", **MESSAGE))["write_id"] for _ in range(3)]
        # The gateway stopped inside the window: nothing sent, all still pending.
        assert inbox.received == []
        async with email_gateway(tmp_path, port, send_window=1.0) as gw:
            finals = [await settled(gw.parts, w) for w in ids]
            assert [w.state for w in finals] == ["sent"] * 3
            await asyncio.sleep(0.3)
            assert sorted(inbox.message_ids()) == sorted(w.message_id for w in finals)


@pytest.mark.asyncio
async def test_a_write_left_sending_by_a_stopped_gateway_becomes_unknown_and_is_not_sent(
    tmp_path: Path,
) -> None:
    async with smtp_server() as (inbox, port):
        async with email_gateway(tmp_path, port, send_window=30) as gw, gw.client() as client:
            write_id = (await client.data("email.send", **MESSAGE))["write_id"]
            # As if the gateway had died between committing `sending` and hearing the server's reply.
            await gw.db.run(
                lambda c: c.execute(
                    "UPDATE proxy_writes SET state = 'sending' WHERE write_id = ?", (write_id,)
                )
            )
        async with email_gateway(tmp_path, port, send_window=30) as gw:
            write = await write_of(gw.parts, write_id)
            assert write.state == "unknown"
            assert "not retried" in (write.detail or "")
            await asyncio.sleep(0.3)
            assert inbox.received == []


@pytest.mark.asyncio
async def test_the_list_shows_pending_and_recent_writes_of_the_caller(tmp_path: Path) -> None:
    async with smtp_server() as (_, port), email_gateway(tmp_path, port, send_window=30) as gw:
        async with gw.client() as client:
            first = (await client.data("email.send", **MESSAGE))["write_id"]
            second = (await client.data("email.send", **{**MESSAGE, "subject": "Two"}))["write_id"]
            await client.data("proxy.cancel_write", write_id=first)
            writes = (await client.data("proxy.list_writes"))["writes"]
        assert [(w["write_id"], w["state"]) for w in writes] == [(second, "pending"), (first, "cancelled")]
        assert writes[0]["summary"] == {
            "account": "test",
            "to": ["ana@example.com"],
            "cc": [],
            "subject": "Two",
        }
        assert "body" not in writes[0]["summary"]
        assert await gw.db.run(functools.partial(buffer.of_key, key_name="bob", limit=10)) == []
