"""Checks shared by every kind of state: key shape and value size (``state`` in the configuration)."""

from __future__ import annotations

from typing import Any

from ..config import StateConfig
from ..errors import InvalidInput, TooLarge
from .queries import dump


def check_key(key: str, config: StateConfig, input_name: str = "key") -> None:
    """A key is 1 to ``max_key_length`` characters, with no control characters."""
    if not key:
        raise InvalidInput(input_name, f"input {input_name!r} is empty", 'pass a key such as "task.current"')
    if len(key) > config.max_key_length:
        raise InvalidInput(
            input_name,
            f"key is {len(key)} characters, over the limit of {config.max_key_length}",
            f"use a key of at most {config.max_key_length} characters",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidInput(
            input_name,
            f"input {input_name!r} contains a control character",
            "use printable characters in keys, e.g. dotted names like config.threshold",
        )


def check_prefix(prefix: str, config: StateConfig) -> None:
    if len(prefix) > config.max_key_length:
        raise InvalidInput(
            "prefix",
            f"prefix is {len(prefix)} characters, over the key limit of {config.max_key_length}",
            f"use a prefix of at most {config.max_key_length} characters",
        )


def encode_value(key: str, value: Any, config: StateConfig) -> str:
    """The value as JSON text; ``too_large`` over ``max_value_bytes``."""
    try:
        text = dump(value)
    except ValueError:
        raise InvalidInput(
            "value", "input 'value' contains NaN or Infinity", "store finite numbers only"
        ) from None
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > config.max_value_bytes:
        raise TooLarge(
            f"the value of {key!r} is {size} bytes as JSON, over the limit of {config.max_value_bytes}",
            recovery=[
                ("use_smaller_value", "store large data in a workspace file and keep its path in state"),
            ],
            details={"key": key, "size": size, "limit": config.max_value_bytes},
        )
    return text
