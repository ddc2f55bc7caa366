"""The dispatch table: every ``kruxos.v1`` request method, its params model and its handler.

Features fill it (the composition root adds what each feature offers: the core's ``ping`` and
``capabilities.*``, ``approvals.check``, the state service's watches and transactions); the protocol
core knows only the names it holds, so a new feature never edits the core. A method's params are
validated against its model once, here, before its handler sees them; a mismatch is
``invalid_message``, as the protocol defines.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import InvalidMessage
from .protocol import one_line, unknown_method
from .sessions import Caller

P = TypeVar("P", bound=BaseModel)

#: What a handler returns: a model (serialised once, with the frame) or a plain JSON object.
Result = BaseModel | dict[str, Any]

# Lower-case dotted words: what a method name can be, so a refusal can name it without escaping.
_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


@dataclass(frozen=True)
class Method(Generic[P]):
    """One request method: ``params`` validates the request's params, ``handler`` answers it."""

    name: str
    params: type[P]
    handler: Callable[[Caller, P], Awaitable[Result]]


class MethodTable:
    """The methods of one gateway, by name; names are unique (a second one is a wiring bug)."""

    def __init__(self, methods: Iterable[Method[Any]] = ()) -> None:
        self._by_name: dict[str, Method[Any]] = {}
        self.add(*methods)

    def add(self, *methods: Method[Any]) -> None:
        for method in methods:
            if not _NAME.fullmatch(method.name):
                raise ValueError(f"method name {method.name!r} is not lower-case dotted words")
            if method.name in self._by_name:
                raise ValueError(f"method {method.name!r} is added twice")
            self._by_name[method.name] = method

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    async def call(self, caller: Caller, name: str, params: dict[str, Any]) -> Result:
        """Validate ``params`` for method ``name`` and run its handler."""
        method = self._by_name.get(name)
        if method is None:
            raise unknown_method(name, self.names)
        return await method.handler(caller, parse_params(method.params, params, name))


def parse_params(model: type[P], params: dict[str, Any], method: str) -> P:
    """Validate a request's ``params`` for ``method``; a mismatch is ``invalid_message``."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise InvalidMessage(
            f"invalid params for {method}: {one_line(exc)}",
            recovery=[("fix_params", "see docs/protocol.md for the params of each method")],
        ) from None
