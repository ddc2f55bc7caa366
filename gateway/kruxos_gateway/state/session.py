"""Session state: in memory, one namespace per connection, dropped when the connection ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import store
from ..config import StateConfig
from ..errors import CapabilityFailed
from .queries import load


@dataclass(frozen=True)
class SessionEntry:
    value_json: str
    version: int
    updated_at: str

    @property
    def value(self) -> Any:
        return load(self.value_json)


class SessionStore:
    """Every live session's keys; values are kept as JSON text (an agent gets a copy, never a alias)."""

    def __init__(self, config: StateConfig) -> None:
        self.config = config
        self._sessions: dict[str, dict[str, SessionEntry]] = {}

    def get(self, session_id: str, key: str) -> SessionEntry | None:
        return self._sessions.get(session_id, {}).get(key)

    def set(self, session_id: str, key: str, value_json: str) -> SessionEntry:
        entries = self._sessions.setdefault(session_id, {})
        old = entries.get(key)
        if old is None and len(entries) >= self.config.max_session_keys:
            raise CapabilityFailed(
                "too_large",
                f"this session already holds {len(entries)} keys, the limit",
                recovery=[("delete_keys", "delete session keys you no longer need, or use persistent state")],
                details={"key": key, "limit": self.config.max_session_keys},
            )
        entry = SessionEntry(value_json, (old.version if old else 0) + 1, store.now())
        entries[key] = entry
        return entry

    def restore(self, session_id: str, key: str, entry: SessionEntry | None) -> None:
        """Put back an earlier entry (or absence): a transaction rolled back."""
        entries = self._sessions.setdefault(session_id, {})
        if entry is None:
            entries.pop(key, None)
        else:
            entries[key] = entry

    def delete(self, session_id: str, key: str) -> bool:
        return self._sessions.get(session_id, {}).pop(key, None) is not None

    def keys(self, session_id: str, prefix: str) -> list[str]:
        return sorted(k for k in self._sessions.get(session_id, {}) if k.startswith(prefix))

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
