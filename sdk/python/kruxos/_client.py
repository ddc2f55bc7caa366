"""The entry point (:class:`KruxOS`) and the connected agents, async and sync."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from kruxos._approvals import Approvals, AsyncApprovals
from kruxos._capabilities import AsyncCapabilities, Capabilities
from kruxos._config import resolve_api_key, resolve_url
from kruxos._connection import AsyncConnection
from kruxos._mcp_config import McpClient, McpConfig, mcp_config
from kruxos._state import AsyncState, State
from kruxos._sync import Portal

__all__ = ["Agent", "AsyncAgent", "AsyncAgentConnector", "KruxOS"]

DEFAULT_OPEN_TIMEOUT = 10.0


class AsyncAgent:
    """A connected, authenticated agent (async). Use ``async with`` or call :meth:`disconnect`."""

    def __init__(self, connection: AsyncConnection, api_key: str) -> None:
        self._connection = connection
        self._api_key = api_key  # for as_mcp_config(); never in repr or errors
        self.capabilities = AsyncCapabilities(connection)
        """Discover and invoke capabilities."""
        self.approvals = AsyncApprovals(connection)
        """Check and wait for approvals (``ApprovalRequired.approval_id``)."""
        self.state = AsyncState(connection)
        """Session, persistent and shared state (``session``, ``persistent``, ``shared``)."""

    @property
    def session_id(self) -> str:
        """The gateway's id for this connection (from ``hello``)."""
        return self._connection.hello.session_id

    @property
    def key_name(self) -> str | None:
        """The name of the API key this agent authenticated with."""
        return self._connection.hello.key_name

    @property
    def gateway_version(self) -> str:
        return self._connection.hello.gateway_version

    @property
    def closed(self) -> bool:
        """True once the connection is closed, by either side."""
        return self._connection.closed

    def as_mcp_config(self, client: McpClient | None = None) -> McpConfig:
        """This gateway and key as an MCP server entry (a dict; ``print()`` shows it as JSON).

        ``client``: ``"claude-code"``, ``"cursor"``, ``"vscode"`` (Streamable HTTP entries) or
        ``"claude-desktop"`` (a stdio bridge command, ``python3 -m kruxos.mcp``); by default the
        generic entry, the gateway's ``ws://…/mcp`` URL with the key as a Bearer header. The result
        holds the API key: keep it out of logs and shared files.
        """
        return mcp_config(self._connection.url, self._api_key, client)

    async def disconnect(self) -> None:
        """Close the connection; requests still in flight fail with ConnectionClosed."""
        await self._connection.close()

    async def __aenter__(self) -> AsyncAgent:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncAgent {self._connection.url} key={self.key_name!r} {state}>"


class Agent:
    """A connected, authenticated agent (blocking). Use ``with`` or call :meth:`disconnect`."""

    def __init__(self, portal: Portal, agent: AsyncAgent) -> None:
        self._portal = portal
        self._agent = agent
        self.capabilities = Capabilities(portal, agent._connection)
        """Discover and invoke capabilities."""
        self.approvals = Approvals(portal, agent.approvals)
        """Check and wait for approvals (``ApprovalRequired.approval_id``)."""
        self.state = State(portal, agent.state)
        """Session, persistent and shared state (``session``, ``persistent``, ``shared``)."""

    @property
    def session_id(self) -> str:
        """The gateway's id for this connection (from ``hello``)."""
        return self._agent.session_id

    @property
    def key_name(self) -> str | None:
        """The name of the API key this agent authenticated with."""
        return self._agent.key_name

    @property
    def gateway_version(self) -> str:
        return self._agent.gateway_version

    @property
    def closed(self) -> bool:
        """True once the connection is closed, by either side."""
        return self._agent.closed

    def as_mcp_config(self, client: McpClient | None = None) -> McpConfig:
        """This gateway and key as an MCP server entry; see :meth:`AsyncAgent.as_mcp_config`."""
        return self._agent.as_mcp_config(client)

    def disconnect(self) -> None:
        """Close the connection and stop the SDK's thread; calling it again does nothing."""
        try:
            if not self._agent.closed:
                self._portal.run(self._agent.disconnect())
        finally:
            self._portal.stop()

    def __enter__(self) -> Agent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        return repr(self._agent).replace("<AsyncAgent", "<Agent", 1)


class AsyncAgentConnector:
    """What :meth:`KruxOS.connect_async` returns: ``await`` it, or use it with ``async with``."""

    def __init__(
        self, url: str, api_key: str, open_timeout: float | None, request_timeout: float | None
    ) -> None:
        self._args = (url, api_key, open_timeout, request_timeout)
        self._agent: AsyncAgent | None = None

    async def _connect(self) -> AsyncAgent:
        url, api_key, open_timeout, request_timeout = self._args
        connection = await AsyncConnection.open(
            url, api_key, open_timeout=open_timeout, request_timeout=request_timeout
        )
        return AsyncAgent(connection, api_key)

    def __await__(self) -> Generator[Any, None, AsyncAgent]:
        return self._connect().__await__()

    async def __aenter__(self) -> AsyncAgent:
        self._agent = await self._connect()
        return self._agent

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._agent is not None:
            await self._agent.disconnect()
            self._agent = None

    def __repr__(self) -> str:
        return f"<AsyncAgentConnector {self._args[0]}>"


class KruxOS:
    """Entry point: ``KruxOS.connect_async(...)`` (async) and ``KruxOS.connect(...)`` (blocking).

    ``host`` is ``"HOST:PORT"`` (``ws://HOST:PORT/v1/supervision``), or a ``ws://`` / ``wss://`` URL
    (path ``/v1/supervision`` when it has none); the port defaults to 7700. When ``host`` is None it comes
    from ``$KRUXOS_HOST``. ``api_key`` defaults to ``$KRUXOS_API_KEY``, then to the systemd credential
    ``$CREDENTIALS_DIRECTORY/kruxos-api-key``. ``open_timeout`` bounds connecting and the handshake;
    ``request_timeout`` (None: no limit) bounds every request, raising ``RequestTimeout``.
    """

    @staticmethod
    def connect_async(
        host: str | None = None,
        *,
        api_key: str | None = None,
        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
        request_timeout: float | None = None,
    ) -> AsyncAgentConnector:
        """Connect an async agent: ``async with KruxOS.connect_async(...) as agent`` or ``await`` it.

        The address and key are resolved and checked at once (``ConfigurationError``), before any I/O.
        """
        return AsyncAgentConnector(resolve_url(host), resolve_api_key(api_key), open_timeout, request_timeout)

    @staticmethod
    def connect(
        host: str | None = None,
        *,
        api_key: str | None = None,
        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
        request_timeout: float | None = None,
    ) -> Agent:
        """Connect a blocking agent; call ``agent.disconnect()`` or use ``with`` when done."""
        connector = KruxOS.connect_async(
            host, api_key=api_key, open_timeout=open_timeout, request_timeout=request_timeout
        )
        portal = Portal()
        try:
            agent = portal.run(connector._connect())
        except BaseException:
            portal.stop()
            raise
        return Agent(portal, agent)
