"""What a transport talks to: the dispatch table, the live sessions, and the core's own methods.

``Gateway.handle`` turns one request frame into its answer frame: the method's handler from the
dispatch table (core/methods.py), its result serialised once with the frame, any ``GatewayError`` as
an ``error`` frame and anything else as ``internal_error`` without a traceback. The gateway is built
by the composition root (``compose.py``); it knows no feature, only the table the features filled.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..capabilities.base import Registry
from ..errors import GatewayError, InternalError
from .methods import Method, MethodTable
from .models import (
    DescribeParams,
    ErrorFrame,
    InvocationResult,
    InvokeParams,
    ListParams,
    PingParams,
    RequestFrame,
    ResponseFrame,
)
from .pipeline import Pipeline
from .protocol import error_frame
from .sessions import Caller, Sessions

log = logging.getLogger(__name__)


class Gateway:
    """Answers requests; shared by every connection of every transport."""

    def __init__(self, methods: MethodTable, sessions: Sessions) -> None:
        self.methods = methods
        self.sessions = sessions

    def session_opened(self, caller: Caller) -> None:
        """Called by the transport once a connection is authenticated and greeted."""
        self.sessions.opened(caller)

    async def session_closed(self, caller: Caller) -> None:
        """Called by the transport when a connection ends; runs every session-closed hook."""
        await self.sessions.closed(caller)

    def sessions_of(self, key_name: str) -> list[Caller]:
        """The live sessions authenticated with the key named ``key_name``."""
        return self.sessions.of_key(key_name)

    async def handle(self, caller: Caller, request: RequestFrame) -> ResponseFrame | ErrorFrame:
        try:
            result = await self.methods.call(caller, request.method, request.params)
            return ResponseFrame(id=request.id, result=result)
        except GatewayError as exc:
            return error_frame(request.id, exc)
        except Exception:
            log.exception("internal error answering %s", request.method)
            return error_frame(request.id, InternalError("internal error in the gateway; see its log"))


def core_methods(registry: Registry, pipeline: Pipeline) -> list[Method[Any]]:
    """``ping`` and ``capabilities.list/describe/invoke``: discovery, and the pipeline's front door."""

    async def ping(caller: Caller, params: PingParams) -> dict[str, Any]:
        return {"pong": True, "time": time.time()}

    async def list_capabilities(caller: Caller, params: ListParams) -> dict[str, Any]:
        definitions = registry.list(params.category, params.tag)
        return {"capabilities": [d.model_dump(mode="json") for d in definitions]}

    async def describe(caller: Caller, params: DescribeParams) -> dict[str, Any]:
        return {"capability": registry.get(params.name).definition.model_dump(mode="json")}

    async def invoke(caller: Caller, params: InvokeParams) -> InvocationResult:
        return await pipeline.invoke(caller, params.name, params.inputs)

    return [
        Method("ping", PingParams, ping),
        Method("capabilities.list", ListParams, list_capabilities),
        Method("capabilities.describe", DescribeParams, describe),
        Method("capabilities.invoke", InvokeParams, invoke),
    ]
