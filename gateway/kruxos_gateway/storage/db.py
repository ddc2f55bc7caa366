"""SQLite off the event loop: one thread owns the one connection and runs every query in turn.

The pattern is datasette's ``database.py`` write thread: coroutines submit a function of the
connection and await its result. The functions are the plain synchronous ones of ``store`` and of
the features' own query modules (``approvals/store.py``, ``state/queries.py``); ``kruxosctl`` calls
those of ``store`` and ``approvals/store.py`` directly inside ``store.transaction``, so no query is
written twice. Those functions never commit: the caller owns the transaction.

**Group commit.** The thread takes every job that is queued when it wakes, runs each inside its own
savepoint (a job that raises is rolled back alone and gets its exception), commits the batch once, and
only then resolves the jobs' futures. So an acknowledged write is on disk (``synchronous=FULL``),
while many concurrent writers share one fsync instead of paying one each.

**Fire and forget.** :meth:`Database.submit` queues a write nobody waits for (the audit record of
an invocation): it lands in the next batch, and :meth:`Database.close` drains the queue, so a clean
shutdown loses none. Only a crash in the few milliseconds before that batch commits can lose one,
which is why nothing an agent is told depends on it. Submitted writes are held on the event loop for
up to ``SUBMIT_DELAY`` before they reach the thread: one invocation at a time would otherwise wake the
thread and pay a commit (and an fsync) each, ~115 µs of CPU per record against ~16 µs in a batch of
ten, taking the GIL from the loop while it answers the next request (bench/gateway_bench.py). Any awaited job
(:meth:`run`, :meth:`flush`, :meth:`close`) hands the held writes over first, so jobs still run in the
order they were queued.

**Rows.** :meth:`Database.submit_row` is ``submit`` for the most frequent write, one row at a time (an
audit record per invocation): rows submitted one after another for the same writer reach the thread
as one job, ``writer(connection, rows)``, which writes them with one statement (should that fail, the
job writes them one by one instead: one row that cannot be written loses no other). Each job and each
statement is a moment where the thread takes the GIL back from the event loop, and on a busy gateway
that handover, not SQLite, is what the loop waits for: one job per batch instead of one per row halves
the cost of an invocation (bench/gateway_bench.py).

**Reads.** :meth:`Database.read` runs a function on one of a few reader threads instead, each with a
connection of its own opened ``PRAGMA query_only``: WAL lets readers go on while the writer writes and
commits, so a read (a key's lookup at the handshake, ``state.shared.get``, a watch's replay) never waits
behind another agent's writes. Each read is one read transaction, so it sees one consistent state, and
it sees every write acknowledged before it began (acks come after the commit). It does not see writes
still held or queued, submitted ones included: a read that must follow its own submitted writes goes
through :meth:`run` instead.

**Rollbacks.** A batch whose commit fails is lost whole; :meth:`on_rollback` registers what must forget
state it derived from that batch (``state.quotas.Usage``), called on the thread right after the rollback.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import store

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

# A batch is bounded so that one burst cannot delay its first writer's answer for long.
MAX_BATCH = 256
# How long submitted (fire-and-forget) writes wait on the event loop to share one batch; see above.
SUBMIT_DELAY = 0.005
# The savepoint each job of a batch runs in: a job that raises is rolled back to it alone.
_JOB_SAVEPOINT = "job"
# Reader threads (each with its own read-only connection): a slow read (a large list) holds up one.
READERS = 2


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any] | None  # None: fire and forget
    loop: asyncio.AbstractEventLoop | None
    result: Any = None
    error: BaseException | None = None


@dataclass
class _HeldRows(Generic[R]):
    """Rows for one writer, submitted one after another; they become one job."""

    writer: Callable[[sqlite3.Connection, Sequence[R]], object]
    rows: list[R]

    def job(self) -> _Job:
        writer, rows = self.writer, self.rows
        return _Job(lambda conn: _write_rows(conn, writer, rows), None, None)


def _write_rows(
    conn: sqlite3.Connection, writer: Callable[[sqlite3.Connection, Sequence[R]], object], rows: Sequence[R]
) -> None:
    """``writer(conn, rows)``; if it fails, each row on its own, so that one bad row loses only itself.

    The rows are unrelated writes (the audit records of different agents' invocations) that share a
    statement only to be cheap: none may be lost because another one cannot be written.
    """
    try:
        writer(conn, rows)  # no savepoint of its own on this, the usual path: the job's is enough
        return
    except Exception as exc:
        if len(rows) == 1:
            raise
        log.warning("writing %d queued rows together failed (%s); writing them one by one", len(rows), exc)
    conn.execute(f"ROLLBACK TO {_JOB_SAVEPOINT}")  # what the failed call wrote, and only that
    for row in rows:
        try:
            _in_savepoint(conn, writer, [row])
        except Exception as exc:
            log.error("a queued database row could not be written and is lost: %s", exc)


def _in_savepoint(
    conn: sqlite3.Connection, writer: Callable[[sqlite3.Connection, Sequence[R]], object], rows: Sequence[R]
) -> None:
    """``writer(conn, rows)``; if it raises, undo what it wrote (and only that), then re-raise."""
    conn.execute("SAVEPOINT rows")
    try:
        writer(conn, rows)
    except BaseException:
        conn.execute("ROLLBACK TO rows")
        conn.execute("RELEASE rows")
        raise
    conn.execute("RELEASE rows")


def _job_of(item: _Job | _HeldRows[Any]) -> _Job:
    return item.job() if isinstance(item, _HeldRows) else item


class Database:
    """The gateway's database, served by one dedicated thread."""

    def __init__(self, path: Path, readers: int = READERS) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._readers = readers
        self._reads: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reader_threads: list[threading.Thread] = []
        self._on_rollback: list[Callable[[], None]] = []
        # Submitted jobs and rows not yet handed to the thread, how many, and the timer that will hand
        # them over.
        self._held: list[_Job | _HeldRows[Any]] = []
        self._held_count = 0
        self._hand_over_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Open the database (creating the schema) on the thread; raise if it cannot be opened."""
        self._thread = threading.Thread(target=self._run, name="kruxos-db", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            self._thread.join()
            self._thread = None
            raise self._open_error
        # After the writer: it has created the schema the readers read.
        try:
            connections = [store.connect_read_only(self.path) for _ in range(self._readers)]
        except BaseException:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
            raise
        for n, conn in enumerate(connections):
            thread = threading.Thread(
                target=self._read_loop, args=(conn,), name=f"kruxos-db-read-{n}", daemon=True
            )
            thread.start()
            self._reader_threads.append(thread)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread; return its result once it is committed."""
        if self._thread is None:
            raise RuntimeError("database not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._hand_over()
        self._jobs.put(_Job(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in one read transaction on a reader thread; return its result.

        The connection is read-only (``PRAGMA query_only``). The read sees every write committed
        before it began, and no write held or queued at that moment (see *Reads* above).
        """
        if not self._reader_threads:
            raise RuntimeError("database not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._reads.put(_Job(fn, future, loop))
        return await future

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the database thread whenever a batch fails to commit (it is lost)."""
        self._on_rollback.append(callback)

    def submit(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue ``fn(connection)`` without waiting; a failure is logged, not raised."""
        self._submit(_Job(fn, None, None))

    def submit_row(self, writer: Callable[[sqlite3.Connection, Sequence[R]], object], row: R) -> None:
        """Queue one ``row`` for ``writer`` without waiting, like :meth:`submit`.

        Rows submitted in a row for the same ``writer`` are handed to the thread together as one job,
        ``writer(connection, rows)``; jobs and rows keep the order in which they were submitted.
        """
        self._submit(_HeldRows(writer, [row]))

    def _submit(self, item: _Job | _HeldRows[Any]) -> None:
        if self._thread is None:
            raise RuntimeError("database not started")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop (another thread): queue it at once
            self._jobs.put(_job_of(item))
            return
        last = self._held[-1] if self._held else None
        if isinstance(item, _HeldRows) and isinstance(last, _HeldRows) and last.writer is item.writer:
            last.rows += item.rows
        else:
            self._held.append(item)
        self._held_count += 1
        if self._held_count >= MAX_BATCH:
            self._hand_over()
        elif self._hand_over_timer is None:
            self._hand_over_timer = loop.call_later(SUBMIT_DELAY, self._hand_over)

    def _hand_over(self) -> None:
        """Queue the held submitted jobs for the thread, in the order they were submitted."""
        if self._hand_over_timer is not None:
            self._hand_over_timer.cancel()
            self._hand_over_timer = None
        held, self._held, self._held_count = self._held, [], 0
        for item in held:
            self._jobs.put(_job_of(item))

    async def flush(self) -> None:
        """Wait until every write queued before this call, submitted ones included, is committed."""
        await self.run(_nothing)

    async def close(self) -> None:
        """Finish the queued work (submitted writes included) and close the connection."""
        if self._thread is not None:
            self._hand_over()
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        readers, self._reader_threads = self._reader_threads, []
        for _ in readers:
            self._reads.put(None)  # after the reads queued so far: those are answered first
        for thread in readers:
            await asyncio.to_thread(thread.join)

    def _run(self) -> None:
        try:
            conn = store.connect(self.path)
        except BaseException as exc:
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                if batch:
                    self._execute(conn, batch)
        finally:
            conn.close()

    def _next_batch(self) -> tuple[list[_Job], bool]:
        """Block for one job, then take whatever else is queued; also say whether close() was asked."""
        first = self._jobs.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _read_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while (job := self._reads.get()) is not None:
                try:
                    conn.execute("BEGIN")  # deferred: a read transaction from the first SELECT on
                    try:
                        job.result = job.fn(conn)
                    finally:
                        conn.execute("ROLLBACK")  # nothing to keep: the connection is query_only
                except BaseException as exc:
                    job.error = exc
                if job.future is not None and job.loop is not None:
                    _resolve(job.loop, job.future, job.result, job.error)
        finally:
            conn.close()

    def _execute(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute(f"SAVEPOINT {_JOB_SAVEPOINT}")
                try:
                    job.result = job.fn(conn)
                except BaseException as exc:
                    conn.execute(f"ROLLBACK TO {_JOB_SAVEPOINT}")
                    job.error = exc
                conn.execute(f"RELEASE {_JOB_SAVEPOINT}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The commit itself failed (disk full, I/O error): nothing in the batch is durable.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.error("database commit failed, %d operation(s) lost: %s", len(batch), exc)
            for job in batch:
                job.result, job.error = None, exc
            for callback in self._on_rollback:
                try:
                    callback()
                except Exception:
                    log.exception("a database rollback callback failed")
        for job in batch:
            if job.future is None or job.loop is None:
                if job.error is not None:
                    log.error("a queued database write failed: %s", job.error)
            else:
                _resolve(job.loop, job.future, job.result, job.error)


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed; nobody waits for this answer any more
        log.debug("dropped a database result: event loop closed")
