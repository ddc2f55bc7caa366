"""Session state: in memory, one namespace per connection, dropped when the connection ends.

A connection holds at most ``state.max_session_keys`` keys (``too_large``) and
``quotas.session_bytes_per_connection`` bytes of values (``quota_exceeded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import QuotasConfig, StateConfig
from ..errors import QuotaExceeded, TooLarge
from ..storage import store
from .queries import load
from .quotas import value_size


@dataclass(frozen=True)
class SessionEntry:
    value_json: str
    version: int
    updated_at: str
    size: int = 0  # bytes of value_json, as counted against quotas.session_bytes_per_connection

    @property
    def value(self) -> Any:
        return load(self.value_json)


class SessionStore:
    """Every live session's keys; values are kept as JSON text (an agent gets a copy, never a alias)."""

    def __init__(self, config: StateConfig, quotas: QuotasConfig | None = None) -> None:
        self.config = config
        self.quotas = quotas or QuotasConfig()
        self._sessions: dict[str, dict[str, SessionEntry]] = {}
        self._bytes: dict[str, int] = {}  # the sum of the entries' sizes, by session

    def get(self, session_id: str, key: str) -> SessionEntry | None:
        return self._sessions.get(session_id, {}).get(key)

    def set(self, session_id: str, key: str, value_json: str) -> SessionEntry:
        entries = self._sessions.setdefault(session_id, {})
        old = entries.get(key)
        if old is None and len(entries) >= self.config.max_session_keys:
            raise TooLarge(
                f"this session already holds {len(entries)} keys, the limit",
                recovery=[("delete_keys", "delete session keys you no longer need, or use persistent state")],
                details={"key": key, "limit": self.config.max_session_keys},
            )
        size = value_size(value_json)
        held = self._bytes.get(session_id, 0)
        after = held - (old.size if old else 0) + size
        limit = self.quotas.session_bytes_per_connection
        if after > held and after > limit:
            raise QuotaExceeded(
                "session_bytes_per_connection",
                f"writing {key!r} would make this connection's session values {after} bytes, over the "
                f"quota of {limit} (quotas.session_bytes_per_connection); they hold {held} bytes now",
                used=held,
                limit=limit,
                fix="delete session keys you no longer need, or keep large data in a workspace file",
                key=key,
            )
        entry = SessionEntry(value_json, (old.version if old else 0) + 1, store.now(), size)
        entries[key] = entry
        self._bytes[session_id] = after
        return entry

    def restore(self, session_id: str, key: str, entry: SessionEntry | None) -> None:
        """Put back an earlier entry (or absence): a transaction rolled back (never refused)."""
        entries = self._sessions.setdefault(session_id, {})
        old = entries.pop(key, None) if entry is None else entries.get(key)
        if entry is not None:
            entries[key] = entry
        change = (entry.size if entry else 0) - (old.size if old else 0)
        self._bytes[session_id] = self._bytes.get(session_id, 0) + change

    def delete(self, session_id: str, key: str) -> bool:
        old = self._sessions.get(session_id, {}).pop(key, None)
        if old is not None:
            self._bytes[session_id] -= old.size
        return old is not None

    def keys(self, session_id: str, prefix: str) -> list[str]:
        return sorted(k for k in self._sessions.get(session_id, {}) if k.startswith(prefix))

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._bytes.pop(session_id, None)
