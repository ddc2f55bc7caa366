"""``state.briefing.generate`` says what changed since this key's last session ended."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from .state_support import agent
from .support import RunningGateway, timeout

pytestmark = pytest.mark.asyncio


async def ended_sessions(gateway: RunningGateway, count: int) -> None:
    """Wait until ``count`` sessions have been recorded as ended."""
    deadline = time.monotonic() + timeout(5)
    while True:
        ended = await gateway.db.run(lambda c: c.execute("SELECT count(*) FROM state_sessions").fetchone()[0])
        if ended >= count:
            return
        assert time.monotonic() < deadline, f"{ended} session(s) recorded as ended, expected {count}"
        await asyncio.sleep(0.01)


async def briefing(gateway: RunningGateway) -> dict[str, Any]:
    async with agent(gateway) as a:
        first = (await a.capabilities.invoke("state.briefing.generate")).data["briefing"]
        again = (await a.capabilities.invoke("state.briefing.generate")).data["briefing"]
    assert first == again  # deterministic: built only from what the database records
    return first  # type: ignore[no-any-return]


async def test_the_first_session_of_a_key_says_so(gateway: RunningGateway) -> None:
    report = await briefing(gateway)
    assert report["first_session"] is True
    assert report["since"] is None
    assert report["summary"].startswith("This is the first session of this key")


async def test_a_briefing_reports_what_others_changed_while_this_key_was_away(
    gateway: RunningGateway,
) -> None:
    async with agent(gateway) as alice:
        await alice.state.persistent.set("research.checkpoint", {"page": 3})
        await alice.state.shared.set("jobs.mine", "started")
        await alice.state.shared.watch(prefix="config.", callback=print)
    await ended_sessions(gateway, 1)
    bob_key = await gateway.create_key("bob")
    async with agent(gateway, bob_key) as bob:
        await bob.capabilities.invoke("filesystem.write", path="/workspace/report.txt", content="r")
        await bob.state.shared.set("config.mode", "fast")
        await bob.state.shared.set("jobs.mine", "taken over")
        await bob.state.shared.set("unrelated", 1)
        await bob.capabilities.invoke("alerts.send", severity="warning", title="Disk filling", message="80%")
    await gateway.db.flush()  # file events are recorded off the answer's path

    report = await briefing(gateway)

    assert report["first_session"] is False
    assert report["since"] is not None
    assert [k["key"] for k in report["persistent"]["keys"]] == ["research.checkpoint"]
    assert report["persistent"]["keys"][0]["changed_since_last_session"] is False
    changed = {c["key"]: (c["why"], c["updated_by"]) for c in report["shared"]["changed"]}
    assert changed == {"config.mode": ("watched", "bob"), "jobs.mine": ("touched", "bob")}
    assert [p["path"] for p in report["files"]["paths"]] == ["/workspace/report.txt"]
    assert report["files"]["paths"][0]["last_by"] == "bob"
    assert [a["title"] for a in report["alerts"]["alerts"]] == ["Disk filling"]
    assert report["summary"] == (
        f"Since your last session ended ({report['since']}): "
        "you have 1 persistent key (research.checkpoint); "
        "2 shared keys you touched or watch changed (config.mode, jobs.mine); "
        "1 workspace path changed (/workspace/report.txt); 1 alert raised (Disk filling)."
    )
