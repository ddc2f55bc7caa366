"""``transaction(agent)``: invocations that are all undone if one fails or the block raises.

.. code-block:: python

    async with transaction(agent) as tx:          # with transaction(sync_agent) as tx: for Agent
        await tx.invoke("filesystem.write", path="/workspace/a.txt", content="hello")
        await tx.invoke("state.persistent.set", key="step", value=2)

The gateway snapshots what each invocation will touch before running it. When the block ends
normally the transaction is committed; when an invocation fails (``tx.invoke`` raises its
``CapabilityError``) or the block raises, the gateway puts back every snapshot, newest first. There is
no isolation: other agents see each effect as soon as it happens, and a rollback compensates for it.
Capabilities that cannot be undone (``process.run``, ``network.http_request``, ``alerts.send``, …)
are refused inside a transaction with a ``CapabilityError`` of type ``not_transactional``.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from kruxos._connection import AsyncConnection
from kruxos._protocol import Call, parse_result
from kruxos._sync import Portal
from kruxos.errors import ConfigurationError, GatewayConnectionError
from kruxos.models import InvocationResult

if TYPE_CHECKING:
    from kruxos._client import Agent, AsyncAgent

__all__ = ["AsyncTransaction", "Transaction", "TransactionContext", "transaction"]


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")
    transaction_id: str
    status: str
    problems: list[str] = Field(default_factory=list)


class _InvokeResult(InvocationResult):
    transaction: _Status


def _begin_call() -> Call[_Status]:
    return Call("transaction.begin", {}, lambda r: parse_result(_Status, r, "transaction.begin"))


def _end_call(method: str, transaction_id: str) -> Call[_Status]:
    return Call(method, {"transaction_id": transaction_id}, lambda r: parse_result(_Status, r, method))


def _invoke_call(transaction_id: str, name: str, inputs: dict[str, Any]) -> Call[_InvokeResult]:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a capability name is a non-empty string, not {name!r}")
    return Call(
        "transaction.invoke",
        {"transaction_id": transaction_id, "name": name, "inputs": inputs},
        lambda r: parse_result(_InvokeResult, r, "transaction.invoke"),
        capability=name,
    )


class AsyncTransaction:
    """An open transaction (async); ``invoke`` inside it, the context manager ends it."""

    def __init__(self, connection: AsyncConnection, transaction_id: str) -> None:
        self._connection = connection
        self.transaction_id = transaction_id
        self.status = "open"
        """``open``, ``committed`` or ``rolled_back``."""
        self.problems: list[str] = []
        """What a rollback could not restore (e.g. a shared key someone else changed since)."""

    async def invoke(self, name: str, /, **inputs: Any) -> InvocationResult:
        """Invoke ``name`` inside the transaction; a failure rolls everything back and raises.

        Raises like ``agent.capabilities.invoke`` when the gateway refuses the invocation, and also
        raises the ``CapabilityError`` of an invocation that ran and failed: either way the gateway has
        already rolled the whole transaction back.
        """
        self._check_open()
        try:
            result = await self._connection.call(_invoke_call(self.transaction_id, name, inputs))
        except BaseException:
            self.status = "rolled_back"  # the gateway rolls back on any refusal, or when we disconnect
            raise
        self.status, self.problems = result.transaction.status, result.transaction.problems
        result.raise_for_error()
        return InvocationResult.model_validate(result.model_dump())

    async def commit(self) -> None:
        """Keep every effect (the end of a block that did not raise does this)."""
        self._check_open()
        self.status = (
            await self._connection.call(_end_call("transaction.commit", self.transaction_id))
        ).status

    async def rollback(self) -> None:
        """Undo every effect now (a block that raises does this)."""
        if self.status != "open":
            return
        ended = await self._connection.call(_end_call("transaction.rollback", self.transaction_id))
        self.status, self.problems = ended.status, ended.problems

    def _check_open(self) -> None:
        if self.status != "open":
            raise ConfigurationError(f"transaction {self.transaction_id} is {self.status.replace('_', ' ')}")

    async def _end(self, failed: bool) -> None:
        if self.status != "open":
            return
        if not failed:
            await self.commit()
            return
        try:
            await self.rollback()
        except GatewayConnectionError:
            self.status = "rolled_back"  # the gateway rolls back a transaction whose connection ended


class Transaction:
    """An open transaction (blocking flavour of :class:`AsyncTransaction`)."""

    def __init__(self, portal: Portal, tx: AsyncTransaction) -> None:
        self._portal = portal
        self._tx = tx

    @property
    def transaction_id(self) -> str:
        return self._tx.transaction_id

    @property
    def status(self) -> str:
        return self._tx.status

    @property
    def problems(self) -> list[str]:
        return self._tx.problems

    def invoke(self, name: str, /, **inputs: Any) -> InvocationResult:
        return self._portal.run(self._tx.invoke(name, **inputs))

    def commit(self) -> None:
        self._portal.run(self._tx.commit())

    def rollback(self) -> None:
        self._portal.run(self._tx.rollback())


class TransactionContext:
    """What :func:`transaction` returns: ``async with`` it (AsyncAgent) or ``with`` it (Agent)."""

    def __init__(self, agent: AsyncAgent | Agent) -> None:
        self._agent = agent
        self._async: AsyncTransaction | None = None

    async def __aenter__(self) -> AsyncTransaction:
        from kruxos._client import AsyncAgent

        if not isinstance(self._agent, AsyncAgent):
            raise ConfigurationError("use `with transaction(agent)` with a blocking Agent")
        connection = self._agent._connection
        begun = await connection.call(_begin_call())
        self._async = AsyncTransaction(connection, begun.transaction_id)
        return self._async

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._async is not None
        await self._async._end(failed=exc_type is not None)

    def __enter__(self) -> Transaction:
        from kruxos._client import Agent

        if not isinstance(self._agent, Agent):
            raise ConfigurationError("use `async with transaction(agent)` with an AsyncAgent")
        portal, connection = self._agent._portal, self._agent._agent._connection
        begun = portal.run(connection.call(_begin_call()))
        self._async = AsyncTransaction(connection, begun.transaction_id)
        return Transaction(portal, self._async)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from kruxos._client import Agent

        assert self._async is not None
        assert isinstance(self._agent, Agent)
        self._agent._portal.run(self._async._end(failed=exc_type is not None))


def transaction(agent: AsyncAgent | Agent) -> TransactionContext:
    """Group invocations so that they all take effect, or are all undone (see the module docs)."""
    return TransactionContext(agent)
