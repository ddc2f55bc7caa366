"""Which TCP connections may go on to send a request: the gate in front of the HTTP server.

A connection is admitted or refused the moment it is accepted, before one byte of it is parsed
(``http.Connection.connection_made``), and counts against ``ratelimit.ConnectionGate`` until it
proves a key or ends. When its address is full, the longest-waiting connection that has had
``EVICTION_GRACE`` without proving a key makes room for the newcomer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from collections import OrderedDict
from typing import Protocol

from ..config import LimitsConfig
from .ratelimit import ConnectionGate

log = logging.getLogger(__name__)

#: Seconds a connection has for its handshake before a newcomer from a full address may take its
#: place. On the device every local agent connects from 127.0.0.1: without this, one agent holding
#: that address's quota of idle connections would keep every other local agent out.
EVICTION_GRACE = 1.0
#: Refused connections are logged at most this often (with how many there were): a flood of them
#: must not become a flood of log lines.
REFUSAL_LOG_INTERVAL = 10.0


class Evictable(Protocol):
    def evict(self) -> None:
        """Close this connection at once: it waited too long for its handshake."""


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"


class Admission:
    """One server's gate for connections without a key yet, and the log of what it refuses."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.refused = 0
        self.logged_at = -math.inf
        # The connections counted in the gate, longest-waiting first, with their address and arrival.
        self.waiting: OrderedDict[Evictable, tuple[str, float]] = OrderedDict()

    def admit(self, connection: Evictable, transport: asyncio.BaseTransport) -> str | None:
        """The peer's address if this new connection may go on, else ``None``.

        When the gate is full for its address, the longest-waiting connection that has had
        ``EVICTION_GRACE`` for its handshake (from that address, or from any when all are full) is
        closed to make room: a handshake on the device takes milliseconds, so only a connection
        held open without one is ever closed this way.
        """
        address = peer_address(transport)
        sock = transport.get_extra_info("socket")
        descriptor = sock.fileno() if sock is not None else -1
        reason = self.gate.admit(address, descriptor)
        if reason is not None and self.gate.is_full(address) and self._evict_stale(address):
            reason = self.gate.admit(address, descriptor)
        if reason is None:
            self.waiting[connection] = (address, time.monotonic())
            return address
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s) before a handshake since the last such line, the last from %s: %s",
                self.refused,
                address,
                reason,
            )
            self.refused, self.logged_at = 0, now
        return None

    def leave(self, connection: Evictable, address: str) -> None:
        """``connection``, admitted for ``address``, proved a key or ended."""
        self.gate.release(address)
        self.waiting.pop(connection, None)

    def _evict_stale(self, address: str) -> bool:
        only_this_address = self.gate.total > self.gate.count  # the address is full, not the gate
        now = time.monotonic()
        for connection, (from_address, since) in self.waiting.items():
            if now - since < EVICTION_GRACE:
                return False  # oldest first: every one after it is younger
            if only_this_address and from_address != address:
                continue
            connection.evict()
            return True
        return False


def raise_descriptor_limit() -> int | None:
    """Raise this process's soft limit on open file descriptors to its hard limit (the unit sets
    both with LimitNOFILE=); return the soft limit now in force, ``None`` if there is none."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit, above the kernel's nr_open
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
        else:
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft


def connection_gate(limits: LimitsConfig) -> ConnectionGate:
    """The limits on unauthenticated connections, given the descriptors this process may open."""
    soft = raise_descriptor_limit()
    ceiling = None
    if soft is not None:
        # Half of a small limit at most: the other half is for connections to be accepted at all.
        reserve = min(limits.reserved_descriptors, soft // 2)
        if reserve < limits.reserved_descriptors:
            log.warning(
                "only %d file descriptors may be open (RLIMIT_NOFILE): %d are kept for authenticated "
                "agents instead of limits.reserved_descriptors=%d; raise LimitNOFILE= in the unit",
                soft,
                reserve,
                limits.reserved_descriptors,
            )
        ceiling = soft - reserve
    return ConnectionGate(
        limits.max_unauthenticated_connections, limits.max_unauthenticated_per_address, ceiling
    )
