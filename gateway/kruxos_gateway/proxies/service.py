"""The service proxies of one gateway: the write buffer's capabilities and its sweeper.

:class:`Proxies` is built by the composition root when a proxy is configured (``email.accounts``),
which takes from it:

- :meth:`~Proxies.capabilities`: each proxy's own (``email.send``), plus ``proxy.cancel_write`` and
  ``proxy.list_writes`` for the writes of any proxy; all invoked through the pipeline, so policy,
  approvals and audit apply to them as to any other capability;
- :meth:`~Proxies.start` and :meth:`~Proxies.close`: at start, the accounts' secrets are checked and
  writes a stopped gateway left ``sending`` become ``unknown`` (never sent twice); then a sweeper
  starts each write when its window ends (``buffer.start``, committed before anything is sent) and
  hands it to its proxy's ``deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from typing import Any, Protocol

from pydantic import Field

from ..capabilities.base import Capability, Context, define
from ..capabilities.inputs import Inputs
from ..config import GatewayConfig
from ..errors import ExecutionFailed, NotFound
from ..storage.db import Database
from . import buffer
from .buffer import Write
from .email import credentials
from .email.proxy import EmailProxy
from .email.smtp import Outcome

log = logging.getLogger(__name__)

#: The longest the sweeper sleeps without looking at the buffer (a write is found even if a wake-up
#: was missed, e.g. one buffered by another process).
MAX_SWEEP_SLEEP = 1.0
LIST_LIMIT = 50


class Proxy(Protocol):
    name: str

    def capabilities(self) -> list[Capability]: ...

    async def deliver(self, write: Write) -> Outcome: ...


class CancelInputs(Inputs):
    write_id: str = Field(description="The write_id that email.send (or another buffered write) returned.")


class ListInputs(Inputs):
    pass


class Proxies:
    """The write buffer and the proxies that write through it."""

    def __init__(self, config: GatewayConfig, db: Database) -> None:
        self.config = config
        self.db = db
        self.proxies: dict[str, Proxy] = {"email": EmailProxy(config.email, self.buffer_write)}
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._delivering: dict[str, asyncio.Task[None]] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the accounts' secrets (``ConfigError``), settle what a stopped gateway left, sweep."""
        credentials.check_credentials(self.config.email)
        for write in await self.db.run(buffer.interrupt_sending):
            log.warning("write %s was being sent when the gateway stopped; now unknown", write.write_id)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="kruxos-proxy-writes")

    async def close(self) -> None:
        """Stop sweeping; let deliveries under way finish, up to ``limits.drain_timeout``.

        One still going then stays ``sending`` and becomes ``unknown`` at the next start."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._delivering:
            running = list(self._delivering.values())
            _, unfinished = await asyncio.wait(running, timeout=self.config.limits.drain_timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _sweep_forever(self) -> None:
        while True:
            sleep = MAX_SWEEP_SLEEP
            try:
                sleep = await self.sweep()
            except Exception:
                log.exception("proxy write sweep failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep)
            self._wake.clear()

    async def sweep(self) -> float:
        """Start every due write; return how long to sleep until the next one is due."""
        due, next_at = await self.db.run(buffer.due)
        for write_id in due:
            if write_id not in self._delivering:
                task = asyncio.create_task(self._deliver(write_id), name=f"kruxos-write-{write_id}")
                self._delivering[write_id] = task
                task.add_done_callback(lambda _, w=write_id: self._delivering.pop(w, None))  # type: ignore[misc]
        if next_at is None:
            return MAX_SWEEP_SLEEP
        return min(MAX_SWEEP_SLEEP, max(0.0, next_at - time.time()))

    async def _deliver(self, write_id: str) -> None:
        write = await self.db.run(functools.partial(buffer.start, write_id=write_id))
        if write is None:
            return  # cancelled first, or not due
        proxy = self.proxies.get(write.proxy)
        if proxy is None:
            outcome = Outcome("failed", f"no proxy {write.proxy!r} is configured")
        else:
            try:
                outcome = await proxy.deliver(write)
            except Exception:
                log.exception("delivering write %s failed inside the gateway", write_id)
                outcome = Outcome("unknown", "the gateway failed while sending; not retried")
        await self._settle(write, outcome)

    async def _settle(self, write: Write, outcome: Outcome) -> None:
        email = self.config.email
        if outcome.next == "retry":
            if write.attempts < email.max_attempts:
                delay = email.retry_delay * 2 ** (write.attempts - 1)
                await self.db.run(
                    functools.partial(
                        buffer.retry_later, write_id=write.write_id, delay=delay, detail=outcome.detail
                    )
                )
                log.info(
                    "write %s: %s; attempt %d in %.1f s",
                    write.write_id,
                    outcome.detail,
                    write.attempts + 1,
                    delay,
                )
                self.wake()
                return
            outcome = Outcome("failed", f"gave up after {write.attempts} attempts: {outcome.detail}")
        await self.db.run(
            functools.partial(
                buffer.finish, write_id=write.write_id, state=outcome.next, detail=outcome.detail
            )
        )
        level = logging.WARNING if outcome.next == "unknown" else logging.INFO
        log.log(
            level,
            "write %s (%s.%s): %s: %s",
            write.write_id,
            write.proxy,
            write.kind,
            outcome.next,
            outcome.detail,
        )

    # --- the buffer, for the proxies ------------------------------------------------------------

    async def buffer_write(
        self, ctx: Context, proxy: str, kind: str, payload: dict[str, Any], message_id: str, window: float
    ) -> Write:
        write = await self.db.run(
            functools.partial(
                buffer.buffer,
                write_id="wr_" + secrets.token_hex(12),
                key_name=ctx.key_name,
                session_id=ctx.session_id,
                proxy=proxy,
                kind=kind,
                payload=payload,
                message_id=message_id,
                window=window,
            )
        )
        self.wake()
        return write

    # --- capabilities ---------------------------------------------------------------------------

    def capabilities(self) -> list[Capability]:
        own = [c for proxy in self.proxies.values() for c in proxy.capabilities()]
        return [
            *own,
            Capability(
                define(
                    "proxy",
                    "cancel_write",
                    ["write", "buffered"],
                    "Take back a buffered write (an email not yet sent) before its window ends.",
                    "When a write returned by email.send should not happen; a write already being sent "
                    "or sent cannot be taken back.",
                    CancelInputs,
                    [("write", "object", "The write, now cancelled.")],
                    "write",
                ),
                self._cancel,
                CancelInputs,
            ),
            Capability(
                define(
                    "proxy",
                    "list_writes",
                    ["safe", "read-only", "buffered"],
                    "List this agent's buffered writes: pending ones and the most recent others.",
                    "To see what is waiting to be sent and what became of earlier writes.",
                    ListInputs,
                    [
                        (
                            "writes",
                            "array",
                            "Writes (write_id, proxy, kind, state, buffer_until, ...), newest first.",
                        )
                    ],
                    "read",
                ),
                self._list,
                ListInputs,
            ),
        ]

    async def _cancel(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        write_id = inputs["write_id"]
        won, write = await self.db.run(
            functools.partial(buffer.cancel, write_id=write_id, key_name=ctx.key_name)
        )
        if write is None:
            raise NotFound(
                f"no buffered write {write_id!r} for this key",
                recovery=[("list_writes", "call proxy.list_writes to see this agent's writes")],
                details={"write_id": write_id},
            )
        if not won:
            raise ExecutionFailed(
                f"write {write_id} cannot be cancelled: it is {write.state}",
                recovery=[("list_writes", "call proxy.list_writes to see what became of it")],
                details={"write_id": write_id, "state": write.state},
            )
        return {"write": write.to_wire()}

    async def _list(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        writes = await self.db.read(functools.partial(buffer.of_key, key_name=ctx.key_name, limit=LIST_LIMIT))
        return {"writes": [w.to_wire() for w in writes]}
