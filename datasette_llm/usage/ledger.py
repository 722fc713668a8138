"""The usage ledger: one row per attempt, written off the request path in batches.

``record()`` never waits: it puts the row in memory and wakes a writer task, which waits
``_GATHER`` (250 ms) for more and then writes what has gathered in one write (a few INSERTs of
many rows each) through Datasette's write queue, into the table ``datasette_llm_usage`` of
Datasette's internal database (persistent with ``--internal file.db``) or of the database
``usage: {database: NAME}`` names. At most
``MAX_PENDING`` rows wait; beyond that the oldest are dropped and the loss is logged. The rows
left are written at shutdown (Datasette's ``shutdown`` hook) or by ``flush()``, and, where
nothing called either (a script's ``asyncio.run`` ending, a Datasette without the ``shutdown``
hook), when the event loop shuts down its asynchronous generators; rows older than
``usage: {retention_days: N}`` are deleted as the writer goes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import fields, replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

from ..config.values import CONFIG_ROOT, UsageSettings
from ..errors import ConfigProblem, ConfigurationError, nearest, quoted
from ..log import logger
from ..routing.overlay import config_for
from ..state import Slot, state_of
from .records import UsageRecord

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.database import Database

__all__ = [
    "COLUMNS",
    "MAX_PENDING",
    "SCHEMA",
    "TABLE",
    "Ledger",
    "flush_usage",
    "ledger_for",
    "record_of",
    "rows",
    "table_exists",
    "unknown_database",
]

TABLE: Final = "datasette_llm_usage"
MAX_PENDING: Final = 100_000
_BATCH: Final = 5_000  # one transaction: a write's cost is mostly reaching the write thread
_DAY: Final = 86_400.0
_GATHER: Final = 0.25
"""Seconds the writer waits, once woken, for more rows to write together: a busy process
writes a few times a second, however many prompts it answers."""
_LOCKED_WAITS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Seconds between tries to create the table while another connection holds the schema."""

COLUMNS: Final = tuple(field.name for field in fields(UsageRecord))
_TYPES: Final = {
    "id": "TEXT PRIMARY KEY",
    "time": "REAL NOT NULL",
    "duration": "REAL NOT NULL",
    "first_token": "REAL",
    "cost": "REAL",
    "attempt": "INTEGER NOT NULL",
    "input_tokens": "INTEGER",
    "output_tokens": "INTEGER",
    "cached_tokens": "INTEGER",
    "sent": "INTEGER",
}
SCHEMA: Final = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (\n"
    + ",\n".join(f"  {name} {_TYPES.get(name, 'TEXT')}" for name in COLUMNS)
    + "\n);\n"
    f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time);\n"
    f"CREATE INDEX IF NOT EXISTS {TABLE}_purpose_time ON {TABLE} (purpose, time);\n"
)
_ROW: Final = attrgetter(*COLUMNS)
_ROWS_A_STATEMENT: Final = 999 // len(COLUMNS)
"""Rows one INSERT writes: within the fewest parameters a statement may have in any SQLite."""


_ONE_ROW: Final = f"({', '.join('?' for _ in COLUMNS)})"


def _insert(count: int) -> str:
    """The INSERT of ``count`` rows in one statement."""
    values = ", ".join([_ONE_ROW] * count)
    return f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMNS)}) VALUES {values}"


def _statements(batch: list[UsageRecord]) -> list[tuple[str, list[object]]]:
    """``batch`` as INSERTs of up to ``_ROWS_A_STATEMENT`` rows each.

    One statement for many rows, rather than ``executemany``'s one step per row: sqlite3 lets go
    of the GIL around every step, and each time it does, the write thread and the event loop's
    thread hand the GIL to each other (two context switches while prompts are being answered).
    """
    return [
        (
            _insert(len(chunk)),
            [value for record in chunk for value in _ROW(record)],
        )
        for chunk in (
            batch[start : start + _ROWS_A_STATEMENT]
            for start in range(0, len(batch), _ROWS_A_STATEMENT)
        )
    ]


def _execute(statements: list[tuple[str, list[object]]]) -> Callable[[sqlite3.Connection], None]:
    def execute(conn: sqlite3.Connection) -> None:
        for sql, params in statements:
            conn.execute(sql, params)

    return execute


Listener = Callable[[UsageRecord], None]
"""Called with each record as it is made (before it is written)."""


class Ledger:
    """The pending rows of one Datasette instance and the task that writes them.

    Attributes:
        database: The name of the database written to, or ``None`` for the internal one.
        retention_days: Rows older than this many days are deleted, or ``None`` to keep all.
        dropped: Rows dropped because ``MAX_PENDING`` were already waiting.
        written: Rows written so far.
    """

    def __init__(
        self, datasette: Datasette, database: str | None, retention_days: float | None
    ) -> None:
        self._datasette = weakref.ref(datasette)
        self.database = database
        self.retention_days = retention_days
        self._pending: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._schema = asyncio.Lock()  # one creation of the table at a time
        self._ready = False
        self.dropped = 0
        self.written = 0
        self._listeners: list[Listener] = []
        self._spent: dict[tuple[str, float], float] = {}  # (purpose, since) -> US dollars
        # The event loop the writer last ran in, and what writes the rows left at its end.
        self._at_end: tuple[weakref.ref[asyncio.AbstractEventLoop], AsyncIterator[None]] | None
        self._at_end = None

    def __repr__(self) -> str:
        return (
            f"<Ledger database={self.database or '(internal)'!r} pending={len(self._pending)} "
            f"written={self.written}>"
        )

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return len(self._pending)

    def keeps(self, settings: UsageSettings) -> bool:
        """Whether this ledger writes where, and keeps rows as long as, ``settings`` say."""
        return (self.database, self.retention_days) == (settings.database, settings.retention_days)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every record made from now on; return a function to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def record(self, record: UsageRecord) -> None:
        """Keep ``record`` to be written; never waits."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(record)
        if record.cost and record.purpose is not None:
            for (purpose, since), spent in self._spent.items():
                if purpose == record.purpose and record.time >= since:
                    self._spent[purpose, since] = spent + record.cost
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:
                logger.exception("A usage listener failed on record %s", record.id)
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._start_writer()

    def _start_writer(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_forever())
        if self._at_end is None or self._at_end[0]() is not loop:
            last = _write_at_loop_end(weakref.ref(self))
            self._at_end = (weakref.ref(loop), last)  # the loop holds its generators weakly
            _STEPPING.add(stepping := loop.create_task(_first_step(last)))
            stepping.add_done_callback(_STEPPING.discard)

    def take_over(self, previous: Ledger) -> None:
        """Take ``previous``'s waiting rows, listeners and counts (the settings changed)."""
        self._pending.extend(previous._pending)
        previous._pending.clear()
        self._listeners.extend(previous._listeners)
        self.dropped, self.written = previous.dropped, previous.written
        if self._pending:
            self._wake.set()
            self._start_writer()

    async def spent(self, purpose: str, since: float, *, fresh: bool = False) -> float:
        """US dollars recorded for ``purpose`` since ``since``: read once, then kept up to date
        with this process's records; ``fresh`` reads the table again (other processes sharing
        it have written theirs).

        The figure a budget's period starts from (``usage/budgets.py`` hands it to the
        coordinator, which keeps the holds of prompts in flight)."""
        known = None if fresh else self._spent.get((purpose, since))
        if known is not None:
            return known
        async with self._lock:  # no batch is on its way to the table meanwhile
            db = await self.ensure_table()
            query = f"SELECT coalesce(sum(cost), 0) FROM {TABLE} WHERE purpose = ? AND time >= ?"
            written = float((await db.execute(query, [purpose, since])).first()[0])
            waiting = sum(
                row.cost or 0.0
                for row in self._pending
                if row.purpose == purpose and row.time >= since
            )
            for key in [key for key in self._spent if key[0] == purpose]:
                del self._spent[key]  # an earlier period's
            self._spent[purpose, since] = written + waiting
        return written + waiting

    async def flush(self) -> None:
        """Write every pending row now."""
        async with self._lock:
            while self._pending:
                await self._write_batch()

    def database_object(self) -> Database:
        """The database the rows go to."""
        datasette = self._datasette()
        if datasette is None:
            raise RuntimeError("the Datasette instance of this ledger is gone")
        if self.database is None:
            return datasette.get_internal_database()
        try:
            return datasette.get_database(self.database)
        except KeyError:
            problem = unknown_database(self.database, datasette.databases)
            raise ConfigurationError([problem]) from None

    async def ensure_table(self) -> Database:
        """Create the table and its indexes if they are missing, and add any column a table
        written by an earlier version lacks (``error``); return its database.

        Once per ledger, on Datasette's write connection (a read connection looking at the
        schema while it changes fails with "table is locked" in a shared-cache database)."""
        db = self.database_object()
        if self._ready:
            return db
        async with self._schema:
            for wait in (*_LOCKED_WAITS, None):
                if self._ready:
                    break
                try:
                    await db.execute_write_fn(_create_table)
                except sqlite3.OperationalError as error:
                    # A shared-cache database (Datasette's in-memory internal one) answers
                    # "table is locked" at once, with no busy timeout, while a read
                    # connection prepares a statement: try again shortly.
                    if wait is None or "locked" not in str(error):
                        raise
                    await asyncio.sleep(wait)
                else:
                    self._ready = True
        return db

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._pending) < _BATCH:
                # Let a busy process's rows gather into one write: each write costs Datasette's
                # write thread a transaction and its schema checks, whatever its size, and while
                # the event loop is busy, a write thread waiting for the GIL is woken at every
                # release of it (each socket call, each turn of the loop) only to wait again.
                await asyncio.sleep(_GATHER)
            try:
                async with self._lock:
                    # One batch, then gather again: rows made during this write wait for the
                    # next, rather than follow on at once in writes of a few rows each.
                    if self._pending:  # (a flush may have written them meanwhile)
                        await self._write_batch()
            except Exception:
                logger.exception("Writing %d usage rows failed; they stay pending", self.pending)
                await asyncio.sleep(1)
            if not self._pending:
                return
            self._wake.set()  # rows are left (made meanwhile, or beyond one batch): another round

    async def _write_batch(self) -> None:
        db = await self.ensure_table()
        batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
        try:
            await db.execute_write_fn(_execute(_statements(batch)))
        except BaseException:
            self._pending.extendleft(reversed(batch))
            raise
        self.written += len(batch)
        if self.dropped:
            logger.warning(
                "Dropped %d usage rows: more than %d were waiting", self.dropped, MAX_PENDING
            )
        if self.retention_days is not None:
            cutoff = time.time() - self.retention_days * _DAY
            await db.execute_write(f"DELETE FROM {TABLE} WHERE time < ?", [cutoff])


async def _write_at_loop_end(ledger: weakref.ref[Ledger]) -> AsyncIterator[None]:
    """Stepped to its ``yield`` when a ledger's writer first runs in an event loop; its
    ``finally`` runs when the loop shuts down its asynchronous generators (``asyncio.run`` does
    after cancelling the tasks left, the writer among them): the rows still waiting are written
    then, not lost with the loop."""
    try:
        yield
    finally:
        kept = ledger()
        if kept is not None and kept.pending:
            with suppress(Exception):
                await kept.flush()


_STEPPING: Final[set[asyncio.Task[None]]] = set()  # the tasks stepping those generators


async def _first_step(generator: AsyncIterator[None]) -> None:
    await generator.__anext__()


def _create_table(conn: sqlite3.Connection) -> None:
    """Create the table and its indexes if missing; add the columns an earlier version's
    table lacks. Runs on Datasette's write connection."""
    conn.executescript(SCHEMA)
    found = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})").fetchall()}
    for name in COLUMNS:
        if name not in found:
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {_TYPES.get(name, 'TEXT')}")


async def table_exists(db: Database) -> bool:
    """Whether the ledger's table is in ``db``: asked on the write connection, where the
    schema is never changing under the question."""

    def exists(conn: sqlite3.Connection) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return conn.execute(query, [TABLE]).fetchone() is not None

    found: bool = await db.execute_write_fn(exists)
    return found


def unknown_database(name: str, attached: Iterable[str]) -> ConfigProblem:
    """The problem of ``usage: {database: NAME}`` naming none of the ``attached`` databases."""
    names = list(attached)
    suggestion = nearest(name, names)
    hint = f" Did you mean {suggestion!r}?" if suggestion else ""
    return ConfigProblem(
        f"{CONFIG_ROOT}.usage.database",
        f"no attached database is named {quoted(name)}.{hint} Attached databases: "
        f"{', '.join(names) or 'none'}. Name one of them, attach its file (datasette serve "
        "FILE.db, datasette llm check FILE.db), or leave database out to keep usage in "
        "Datasette's internal database.",
    )


_LEDGER: Final[Slot[Ledger]] = Slot("the usage ledger")


def ledger_for(datasette: Datasette, settings: UsageSettings | None = None) -> Ledger:
    """Return the ledger of ``datasette``, with the ``usage`` settings of its configuration.

    When those settings change (a new database, a new retention), the new ledger takes over
    the rows still waiting, the listeners and the spend it knows of. ``settings``: those a
    prompt was routed under; the ledger is returned at once if it has them (no look at the
    configuration on every row), else the configuration's decide.
    """
    state = state_of(datasette)
    ledger = state.get(_LEDGER)
    if ledger is not None and settings is not None and ledger.keeps(settings):
        return ledger
    settings = config_for(datasette).usage
    if ledger is not None and ledger.keeps(settings):
        return ledger
    fresh = Ledger(datasette, settings.database, settings.retention_days)
    if ledger is not None:
        fresh.take_over(ledger)
    return state.put(_LEDGER, fresh)


async def read_records(
    ledger: Ledger, since: float | None, purpose: str | None
) -> list[UsageRecord]:
    """The written records of ``ledger``'s table, oldest first, filtered as asked."""
    db = await ledger.ensure_table()
    where = ["time >= ?"]
    params: list[object] = [since if since is not None else 0.0]
    if purpose is not None:
        where.append("purpose = ?")
        params.append(purpose)
    sql = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE {' AND '.join(where)} ORDER BY time, id"
    return [record_of(row) for row in (await db.execute(sql, params)).rows]


def record_of(row: Sequence[Any]) -> UsageRecord:
    """The record of a row of the table, its columns in the order of ``COLUMNS``."""
    record = UsageRecord(*row)
    if record.sent is not None:
        record = replace(record, sent=bool(record.sent))  # stored as 0 or 1
    return record


async def flush_usage(datasette: Datasette) -> None:
    """Write every pending usage row of ``datasette`` now (at shutdown, before reading)."""
    ledger = state_of(datasette).get(_LEDGER)
    if ledger is not None:
        await ledger.flush()


def rows(records: Iterable[UsageRecord]) -> list[tuple[object, ...]]:
    """The records as table rows, in ``COLUMNS`` order."""
    return [_ROW(record) for record in records]
