"""Port 7700: the HTTP server (``http``), its admission gate (``admission``) and the routes on it —
``/health``, the ``kruxos.v1`` WebSocket (``supervision``) and whatever the composition root adds
(``routes=``, ``add_routes``) — started, watched for revoked keys, and shut down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from http import HTTPStatus

from aiohttp import web

from .._version import __version__
from ..config import GatewayConfig
from ..core.gateway import Gateway
from ..storage import store
from ..storage.db import Database
from .admission import Admission, connection_gate
from .http import HttpServer, json_response
from .supervision import Supervision

log = logging.getLogger(__name__)


class GatewayServer:
    """The gateway's listening socket, its routes and its connections."""

    def __init__(
        self,
        config: GatewayConfig,
        db: Database,
        app: Gateway,
        routes: Iterable[web.AbstractRouteDef] = (),
    ) -> None:
        self.config = config
        self.db = db
        self.app = app
        self.supervision = Supervision(config, db, app)
        # The gate reads the descriptor limit when the server starts (raise_descriptor_limit).
        self._http: HttpServer | None = None
        self._routes: list[web.AbstractRouteDef] = [
            web.get("/health", self._health),
            *self.supervision.routes(),
            *routes,
        ]
        # What tests and the benchmark look at: the live sessions and the connections per key.
        self._live = self.supervision.live
        self._connections_per_key = self.supervision.connections_per_key
        self._check_revocations = asyncio.Event()
        self._revocation_watch: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.supervision.draining

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Serve ``routes`` as well (before ``start``): aiohttp route definitions, e.g.
        ``[web.post("/mcp", handler)]``. Their requests are admitted like every other."""
        if self._http is not None:
            raise RuntimeError("routes are added before the server starts")
        self._routes.extend(routes)

    async def start(self) -> None:
        limits = self.config.limits
        http = HttpServer(limits, Admission(connection_gate(limits)), shutdown_timeout=limits.drain_timeout)
        http.add_routes(self._routes)
        await http.start(self.config.listen.host, self.config.listen.port)
        self._http = http
        self._revocation_watch = asyncio.create_task(self._watch_revocations())

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually listened on (the port is real even if 0 was configured)."""
        assert self._http is not None
        return self._http.address

    async def _health(self, request: web.Request) -> web.Response:
        if self.draining:
            return json_response(
                HTTPStatus.SERVICE_UNAVAILABLE, {"status": "draining", "version": __version__}
            )
        return json_response(HTTPStatus.OK, {"status": "ok", "version": __version__})

    # --- revoked keys ---------------------------------------------------------------------------

    def check_revocations(self) -> None:
        """Look for revoked keys now (SIGUSR1: kruxosctl changed the database)."""
        self._check_revocations.set()

    async def _watch_revocations(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_revocations.wait(), store.REVOCATION_CHECK_INTERVAL)
            self._check_revocations.clear()
            try:
                await self.close_revoked()
            except Exception:  # the database is failing: keep the connections, try again later
                log.exception("checking open connections for revoked keys failed")

    async def close_revoked(self) -> int:
        """Close (4401) every connection whose key was revoked after its handshake; how many."""
        return await self.supervision.close_revoked()

    # --- shutdown -------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Drain: refuse new work, tell clients, let requests finish, then close with 1001."""
        if self.draining or self._http is None:
            return
        self.supervision.draining = True
        if self._revocation_watch is not None:
            self._revocation_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._revocation_watch
        await self.supervision.drain()
        await self._http.close()  # stops listening and closes every other connection
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once ``shutdown`` has closed every connection."""
        await self._closed.wait()
