"""What one API key holds in persistent and shared state, against its quotas (``quotas`` in the
configuration; docs/gateway.md, *Agent state*, Quotas).

The check and the write are one job on the database thread (``queries.persistent_set``,
``queries.shared_write``), so the connections of one key cannot each take the last of its room. What a
key holds is read from the tables the first time one of its writes needs it, and from then on each
write job brings it up to date as its last step (a job that raises changes nothing); a batch that fails
to commit clears it all (``db.Database.on_rollback``), to be read again.

- persistent: the key's live keys (those with a version not rolled back), and the UTF-8 bytes of their
  current values; the older versions kept for history (``state.persistent_history``) are not counted.
- shared: the keys whose last change was a write (not a delete) by this API key, and their values'
  bytes: a shared key counts against whoever wrote it last, and stops counting once deleted.

A write that adds neither a key nor bytes is never refused (a smaller value, a delete), so a key over a
quota lowered by the operator can always shrink back under it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..config import QuotasConfig
from ..errors import QuotaExceeded


def value_size(text: str) -> int:
    """The bytes of a value's JSON text as stored (UTF-8), as ``limits.encode_value`` measures it."""
    return len(text.encode("utf-8", errors="surrogatepass"))


@dataclass
class Held:
    """The live keys and value bytes of one API key in one kind of state."""

    keys: int = 0
    bytes: int = 0


_FIX = {
    "persistent_keys": "write to persistent keys you already have instead of new ones "
    "(persistent keys cannot be deleted)",
    "persistent_bytes": "store smaller persistent values: keep large data in a workspace file "
    "and its path in state",
    "shared_keys": "delete shared keys you wrote and no longer need",
    "shared_bytes": "delete shared keys you wrote and no longer need, or store smaller values "
    "(large data belongs in a workspace file, its path in state)",
}


class Usage:
    """What each API key holds; used only on the database thread, inside write jobs."""

    def __init__(self, quotas: QuotasConfig) -> None:
        self.quotas = quotas
        self._persistent: dict[str, Held] = {}
        self._shared: dict[str, Held] | None = None

    def clear(self) -> None:
        """Forget everything (a batch was lost): it is read from the tables again when needed."""
        self._persistent = {}
        self._shared = None

    def persistent(self, conn: sqlite3.Connection, owner: str) -> Held:
        held = self._persistent.get(owner)
        if held is None:
            # The newest live version of each key (SQLite takes the bare column from the max row).
            row = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM (SELECT max(version),"
                " length(CAST(value AS BLOB)) AS size FROM state_persistent"
                " WHERE owner = ? AND reverted = 0 GROUP BY key)",
                (owner,),
            ).fetchone()
            held = self._persistent[owner] = Held(int(row[0]), int(row[1]))
        return held

    def shared(self, conn: sqlite3.Connection, owner: str) -> Held:
        if self._shared is None:
            # Every owner at once: one pass over the current values, however many keys write.
            self._shared = {
                str(r[0]): Held(int(r[1]), int(r[2]))
                for r in conn.execute(
                    "SELECT updated_by, count(*), coalesce(sum(length(CAST(value AS BLOB))), 0)"
                    " FROM state_shared WHERE deleted = 0 GROUP BY updated_by"
                )
            }
        return self._shared.setdefault(owner, Held())

    def check(self, kind: str, owner: str, key: str, held: Held, keys: int, size: int) -> None:
        """Raise ``QuotaExceeded`` if ``owner`` going from ``held`` to ``keys``/``size`` of ``kind``
        state (persistent, shared) grows past a quota; a change that does not grow is always allowed."""
        key_limit = getattr(self.quotas, f"{kind}_keys")
        byte_limit = getattr(self.quotas, f"{kind}_bytes")
        if keys > held.keys and keys > key_limit:
            raise QuotaExceeded(
                f"{kind}_keys",
                f"the API key {owner!r} already holds {held.keys} {kind} keys, its quota of {key_limit} "
                f"(quotas.{kind}_keys): {key!r} would be one more",
                used=held.keys,
                limit=key_limit,
                fix=_FIX[f"{kind}_keys"],
                key=key,
            )
        if size > held.bytes and size > byte_limit:
            raise QuotaExceeded(
                f"{kind}_bytes",
                f"writing {key!r} would make the {kind} values of the API key {owner!r} {size} bytes, "
                f"over its quota of {byte_limit} (quotas.{kind}_bytes); they hold {held.bytes} bytes now",
                used=held.bytes,
                limit=byte_limit,
                fix=_FIX[f"{kind}_bytes"],
                key=key,
            )
