"""``agent.approvals``: check and wait for the approvals that ``ApprovalRequired`` names.

Waiting is pushed, not polled: the gateway sends an ``approval.resolved`` event to every connection of
the approval's key once it is resolved. :meth:`AsyncApprovals.wait` listens for that event first, then
checks the approval once (it may already be resolved, e.g. while this agent was disconnected or the
gateway restarted), then sleeps until the event, its timeout, or the connection's end. So a wait
started on a new connection after a reconnect picks up a decision made in between.

The request (``approvals.check``) is defined once as a :class:`Call`; the sync namespace runs the very
same coroutines through the agent's portal.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from kruxos._connection import AsyncConnection
from kruxos._protocol import Call, closed_error, parse_result
from kruxos._sync import Portal
from kruxos.errors import ApprovalTimeout, ConfigurationError
from kruxos.models import ApprovalStatus

__all__ = ["APPROVAL_RESOLVED", "Approvals", "AsyncApprovals", "check_call"]

APPROVAL_RESOLVED = "approval.resolved"


class _CheckResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    approval: ApprovalStatus


def check_call(approval_id: str) -> Call[ApprovalStatus]:
    if not isinstance(approval_id, str) or not approval_id:
        raise ConfigurationError(
            f"an approval id is the non-empty string from ApprovalRequired.approval_id, not {approval_id!r}"
        )
    return Call(
        "approvals.check",
        {"approval_id": approval_id},
        lambda result: parse_result(_CheckResult, result, "approvals.check").approval,
    )


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0):
        raise ConfigurationError(f"timeout is a number of seconds (>= 0) or None, not {timeout!r}")


class AsyncApprovals:
    """Approvals of this agent's key (``await agent.approvals.…``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self._waiters: dict[str, list[asyncio.Future[ApprovalStatus]]] = {}
        connection.add_listener(APPROVAL_RESOLVED, self._on_resolved)

    async def check(self, approval_id: str) -> ApprovalStatus:
        """Where the approval stands now (``.resolved``, ``.approved``, ``.status``, ``.reason``, …).

        Raises :class:`~kruxos.errors.CapabilityError` (type ``not_found``) for an id that does not
        belong to this agent's key.
        """
        return await self._connection.call(check_call(approval_id))

    # The guide's API takes timeout= (ASYNC109): it bounds the wait only, not the connection.
    async def wait(self, approval_id: str, timeout: float | None = None) -> ApprovalStatus:  # noqa: ASYNC109
        """Block until the approval is resolved; return its :class:`~kruxos.models.ApprovalStatus`.

        Approved: ``.approved`` is True and ``.data`` / ``.success`` / ``.error`` are the outcome of the
        invocation, which the gateway ran exactly once. Rejected or expired: ``.approved`` is False and
        ``.reason`` says why. Raises :class:`~kruxos.errors.ApprovalTimeout` after ``timeout`` seconds
        (None: no limit), leaving the approval pending; :class:`~kruxos.errors.ConnectionClosed` if the
        connection ends first (the approval lives on in the gateway: wait again once reconnected).
        """
        _check_timeout(timeout)
        future: asyncio.Future[ApprovalStatus] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(approval_id, []).append(future)  # before the check: no event is missed
        try:
            async with asyncio.timeout(timeout):
                status = await self.check(approval_id)
                if status.resolved:
                    return status
                closed = asyncio.ensure_future(self._connection.wait_closed())
                waiting: list[asyncio.Future[Any]] = [future, closed]
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                if future.done():
                    return future.result()
                raise closed_error(None, "")
        except TimeoutError:
            raise ApprovalTimeout(approval_id, timeout or 0.0) from None
        finally:
            waiting = self._waiters.get(approval_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(approval_id, None)

    def _on_resolved(self, data: Any) -> None:
        try:
            status = ApprovalStatus.model_validate(data)
        except ValueError:
            return  # a malformed event is ignored, like any frame the SDK cannot read
        if not status.resolved:
            return
        for future in self._waiters.get(status.approval_id, []):
            if not future.done():
                future.set_result(status)


class Approvals:
    """Approvals of this agent's key, blocking (``agent.approvals.…``)."""

    def __init__(self, portal: Portal, approvals: AsyncApprovals) -> None:
        self._portal = portal
        self._approvals = approvals

    def check(self, approval_id: str) -> ApprovalStatus:
        """Where the approval stands now; blocking :meth:`AsyncApprovals.check`."""
        return self._portal.run(self._approvals.check(approval_id))

    def wait(self, approval_id: str, timeout: float | None = None) -> ApprovalStatus:
        """Block until the approval is resolved; blocking :meth:`AsyncApprovals.wait`."""
        return self._portal.run(self._approvals.wait(approval_id, timeout))
