"""A revoked key loses its open connections too, not only its next handshake: the gateway closes them
with 4401 at once when kruxosctl signals it, and within a few seconds when nothing does."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kruxos import ConnectionClosed, KruxOS
from kruxos_gateway.storage import store

from .support import RunningGateway, eventually, make_config, running_gateway, timeout
from .test_approvals_daemon import Appliance, appliance
from .test_daemon import daemons

__all__ = ["appliance", "daemons"]  # fixtures, imported for the tests below

REVOKED = (4401, "API key revoked")
SLEEPER = "sleep 31.4159"  # a command line no other test runs


def processes_running(command: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().replace(b"\0", b" ").strip() == command.encode():
                return True
        except OSError:  # the process ended meanwhile
            continue
    return False


def first_error_within(seconds: float, call: Callable[[], object]) -> Exception | None:
    """Repeat ``call`` until it raises (the exception) or ``seconds`` pass (None)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            call()
        except Exception as exc:
            return exc
        time.sleep(0.05)
    return None


@pytest.mark.asyncio
async def test_revoking_a_key_closes_its_connections_and_only_those(gateway: RunningGateway) -> None:
    bob = await gateway.create_key("bob")
    async with gateway.client(bob) as first, gateway.client(bob) as second, gateway.client() as alice:
        assert await gateway.revoke_key("bob")
        assert await gateway.server.close_revoked() == 2
        assert await first.closed() == REVOKED
        assert await second.closed() == REVOKED
        assert (await alice.result("filesystem.list"))["success"]


@pytest.mark.asyncio
async def test_a_new_key_under_a_revoked_name_keeps_its_connection(gateway: RunningGateway) -> None:
    old = await gateway.create_key("bob")
    async with gateway.client(old) as stale:
        await gateway.revoke_key("bob")
        new = await gateway.create_key("bob", take_over=True)
        async with gateway.client(new) as fresh:
            assert await gateway.server.close_revoked() == 1
            assert await stale.closed() == REVOKED
            assert (await fresh.result("filesystem.list"))["success"]


@pytest.mark.asyncio
async def test_without_a_signal_the_periodic_check_closes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "REVOCATION_CHECK_INTERVAL", 0.05)
    async with running_gateway(make_config(tmp_path)) as gateway, gateway.client() as alice:
        await gateway.revoke_key("alice")  # no check_revocations(): nobody tells the gateway
        assert await alice.closed(seconds=2) == REVOKED


@pytest.mark.asyncio
async def test_a_request_in_flight_is_cut_off_with_the_connection(gateway: RunningGateway) -> None:
    async with gateway.client() as alice:
        await alice.send_request(
            "capabilities.invoke", {"name": "process.run", "inputs": {"command": SLEEPER}}
        )
        await eventually(lambda: processes_running(SLEEPER))
        await gateway.revoke_key("alice")
        gateway.server.check_revocations()
        started = time.monotonic()
        assert await alice.closed() == REVOKED
        assert time.monotonic() - started < timeout(5)
    await eventually(lambda: not gateway.server._live)
    await eventually(lambda: not processes_running(SLEEPER))  # the request was cancelled, its command killed


def test_kruxosctl_revoke_closes_the_agents_connection_at_once(appliance: Appliance) -> None:
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        assert agent.capabilities.invoke("filesystem.list", path=".").success
        revoked = appliance.ctl("keys", "revoke", "alice")
        assert revoked.returncode == 0, revoked.stderr
        assert "its open connections are being closed" in revoked.stderr
        # Well inside the periodic check's interval: the signal did it.
        within = min(timeout(2), store.REVOCATION_CHECK_INTERVAL - 1)
        error = first_error_within(within, lambda: agent.capabilities.invoke("filesystem.list"))
    assert isinstance(error, ConnectionClosed), error
    assert error.code == 4401
    assert "its API key was revoked" in str(error)
