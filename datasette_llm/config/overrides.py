"""Routing overrides: a purpose's model, fallbacks and options set on ``/-/llm``, over the YAML.

They are stored in Datasette's internal database (kept across restarts with ``--internal
file.db``): the table ``datasette_llm_overrides`` holds one row per purpose, with a version that
every write must name (a write based on an older version is an ``OverrideConflict``, never a
silent overwrite); ``datasette_llm_audit`` holds one row per write, who made it, when, and the
override before and after.

Each Datasette keeps its overrides in memory, in its ``State``: loaded once (``load_overrides``,
awaited by the ``startup`` hook, and started by the first ``overrides_of`` otherwise) and
replaced, as a new mapping, by every ``save_override``. ``routing.overlay.config_for`` lays them
over the configuration. Every process sharing the database file sees a write within a second:
when what it holds was last checked ``REFRESH_SECONDS`` ago, ``overrides_of`` starts one check
in the background, which reads the id of the latest audit row (every write adds one, in its
transaction) and, only when that id moved, every override again. So a check costs one small read
a second per Datasette, however many calls route; ``freshness_of`` counts them.

So the processes serving one Datasette share their overrides by sharing its internal database
file (``datasette serve --internal same.db`` in each): a process that uses its own internal
database keeps its own overrides. With ``coordination: {redis: ...}`` configured, a write is
seen by the others at once rather than within the second: the process that saved it announces
it through Redis, and each process hearing it checks now (``refresh_overrides``;
``datasette_llm.coordination.backend``). Redis carries only that notice: the overrides are
always read from the internal database.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ..log import logger
from ..state import Slot, state_of

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = [
    "AUDIT_TABLE",
    "NO_OVERRIDES",
    "OVERRIDES_TABLE",
    "REFRESH_SECONDS",
    "SCHEMA",
    "AuditEntry",
    "Freshness",
    "OverrideConflict",
    "RouteOverride",
    "StoredOverride",
    "audit_entries",
    "freshness_of",
    "load_overrides",
    "overrides_of",
    "refresh_overrides",
    "save_override",
    "version_of",
]

OVERRIDES_TABLE: Final = "datasette_llm_overrides"
AUDIT_TABLE: Final = "datasette_llm_audit"
SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS {OVERRIDES_TABLE} (
  purpose TEXT PRIMARY KEY,
  override TEXT NOT NULL,
  version INTEGER NOT NULL,
  updated_by TEXT,
  updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
  id INTEGER PRIMARY KEY,
  purpose TEXT NOT NULL,
  version INTEGER NOT NULL,
  actor_id TEXT,
  at TEXT NOT NULL,
  before TEXT NOT NULL,
  after TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_purpose ON {AUDIT_TABLE} (purpose, id);
"""


@dataclass(frozen=True, slots=True)
class RouteOverride:
    """What an override sets for one purpose; ``None`` leaves a value to datasette.yaml.

    Attributes:
        model: The purpose's model id, or ``None``.
        fallbacks: The purpose's fallbacks, in order, or ``None``.
        options: The options of the purpose's model reference, or ``None``.
    """

    model: str | None = None
    fallbacks: tuple[str, ...] | None = None
    options: Mapping[str, object] | None = field(default=None, hash=False)

    @property
    def empty(self) -> bool:
        """Whether it sets nothing: datasette.yaml decides every value."""
        return self.model is None and self.fallbacks is None and self.options is None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict with only the values it sets."""
        value: dict[str, object] = {}
        if self.model is not None:
            value["model"] = self.model
        if self.fallbacks is not None:
            value["fallbacks"] = list(self.fallbacks)
        if self.options is not None:
            value["options"] = dict(self.options)
        return value

    @classmethod
    def from_json(cls, value: object) -> RouteOverride:
        """Build one from ``to_json``'s output, ignoring anything malformed."""
        if not isinstance(value, Mapping):
            return cls()
        model = value.get("model")
        fallbacks = value.get("fallbacks")
        options = value.get("options")
        return cls(
            model=model if isinstance(model, str) and model else None,
            fallbacks=(
                tuple(item for item in fallbacks if isinstance(item, str))
                if isinstance(fallbacks, list)
                else None
            ),
            options=MappingProxyType(dict(options)) if isinstance(options, Mapping) else None,
        )


_NOTHING: Final = RouteOverride()


@dataclass(frozen=True, slots=True)
class StoredOverride:
    """One purpose's row in ``datasette_llm_overrides``.

    Attributes:
        purpose: The purpose name.
        override: What it sets (``empty`` once reverted: the version is kept).
        version: Incremented by every write, starting at 1; a purpose never written is at 0.
        updated_by: The id of the actor who wrote it last, or ``None``.
        updated_at: When, as an ISO 8601 UTC time.
    """

    purpose: str
    override: RouteOverride
    version: int
    updated_by: str | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One write, as ``datasette_llm_audit`` records it.

    Attributes:
        purpose: The purpose written.
        version: The version the write made.
        actor_id: Who wrote it, or ``None``.
        at: When, as an ISO 8601 UTC time.
        before: The override before.
        after: The override after.
    """

    purpose: str
    version: int
    actor_id: str | None
    at: str
    before: RouteOverride
    after: RouteOverride


class OverrideConflict(Exception):
    """A write named a version that is no longer current: someone else wrote in between.

    Attributes:
        purpose: The purpose written.
        based_on: The version the refused write was based on.
        current: What is stored now (the other write, kept).
    """

    def __init__(self, purpose: str, based_on: int, current: StoredOverride) -> None:
        self.purpose = purpose
        self.based_on = based_on
        self.current = current
        if current.version == 0:
            # A form from before a restart that lost the overrides (no --internal file).
            now = (
                "no override is stored for it (version 0): the overrides were lost, e.g. by a "
                "restart without --internal"
            )
        else:
            now = (
                f"it is at version {current.version}, written by "
                f"{current.updated_by or 'an anonymous actor'} at {current.updated_at}"
            )
        super().__init__(
            f"The routing of purpose {purpose!r} is not at version {based_on}, which the edit "
            f"was based on: {now}. Reload it, then make the change again."
        )


NO_OVERRIDES: Final[Mapping[str, StoredOverride]] = MappingProxyType({})

REFRESH_SECONDS: Final = 1.0
"""How old the last check of the overrides held in memory may be before ``overrides_of`` starts
another, in the background, to see writes by other processes sharing the internal database."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current the overrides one Datasette holds in memory are, and what keeping them cost.

    Attributes:
        stamp: The id of the latest audit row when they were read (0: nothing written yet), or
            ``None`` before they are loaded. A write of this process counts from the next check.
        checks: How many checks for a newer write read the internal database.
        reloads: How many of those found one, and read every override again.
        failing: Whether the last check failed (it is logged, and retried a second later).
    """

    stamp: int | None
    checks: int
    reloads: int
    failing: bool


@dataclass(slots=True)
class _Held:
    """The overrides of one Datasette held in memory, the tasks reading them, and their stamp.

    Attributes:
        loaded: The overrides by purpose, replaced (never changed) by each read and write.
        loading: The task of the first read.
        stamp: The id of the latest audit row when ``loaded`` was read (0: none).
        checked: When (``time.monotonic()``) the last check started, or the first read ended.
        checking: The last check started; at most one is under way in an event loop.
        writes: How many writes of this process replaced ``loaded``: a check that began before
            one is not applied over it.
        checks: See ``Freshness``.
        reloads: See ``Freshness``.
        failing: See ``Freshness``.
    """

    loaded: Mapping[str, StoredOverride] | None = None
    loading: asyncio.Task[Mapping[str, StoredOverride]] | None = None
    stamp: int = 0
    checked: float = 0.0
    checking: asyncio.Task[None] | None = None
    writes: int = 0
    checks: int = 0
    reloads: int = 0
    failing: bool = False


_HELD: Final[Slot[_Held]] = Slot("the routing overrides")


def _held(datasette: Datasette) -> _Held:
    return state_of(datasette).setdefault(_HELD, _Held)


def version_of(overrides: Mapping[str, StoredOverride], purpose: str) -> int:
    """Return the current version of ``purpose`` (0 when it was never written)."""
    stored = overrides.get(purpose)
    return 0 if stored is None else stored.version


def overrides_of(datasette: Datasette) -> Mapping[str, StoredOverride]:
    """Return the overrides of ``datasette`` held in memory, by purpose. Cheap and synchronous.

    Before they are loaded, return none, and start loading them if an event loop is running.
    Once loaded, when the last check is ``REFRESH_SECONDS`` old, start one in the background
    (never awaited here): a write by another process is returned within about a second.
    """
    held = _held(datasette)
    if held.loaded is not None:
        if _stale(held):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop: nothing can read
                return held.loaded
            _check_in(loop, datasette, held)
        return held.loaded
    if held.loading is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return NO_OVERRIDES
        task = held.loading = loop.create_task(_load(datasette))
        task.add_done_callback(_retrieved)  # a failure is logged, and retried when awaited
    return NO_OVERRIDES


def freshness_of(datasette: Datasette) -> Freshness:
    """Return how current the overrides ``datasette`` holds are, and how often they were checked."""
    held = _held(datasette)
    stamp = None if held.loaded is None else held.stamp
    return Freshness(stamp=stamp, checks=held.checks, reloads=held.reloads, failing=held.failing)


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _stale(held: _Held) -> bool:
    return time.monotonic() - held.checked >= REFRESH_SECONDS


def _check_in(
    loop: asyncio.AbstractEventLoop, datasette: Datasette, held: _Held
) -> asyncio.Task[None]:
    """Return the check under way in ``loop``, first starting one if there is none."""
    task = held.checking
    if task is None or task.done() or task.get_loop() is not loop:
        held.checked = time.monotonic()
        task = held.checking = loop.create_task(_check(datasette, held))
        task.add_done_callback(_retrieved)
    return task


async def _check(datasette: Datasette, held: _Held) -> None:
    """Read the latest audit id; only if it moved, replace what is held by every override.

    A failure is logged once, until a check succeeds again, and never raised.
    """
    writes, known = held.writes, held.stamp

    def read(conn: sqlite3.Connection) -> tuple[int, Mapping[str, StoredOverride] | None]:
        stamp = _stamp(conn)
        return stamp, None if stamp == known else _every(conn)

    db = datasette.get_internal_database()
    held.checks += 1
    try:
        outcome: tuple[int, Mapping[str, StoredOverride] | None] = await db.execute_fn(read)
    except Exception as error:
        if not held.failing:
            logger.warning(
                "datasette-llm: cannot check the routing overrides for writes by other "
                "processes (retried every %gs): %s",
                REFRESH_SECONDS,
                error,
            )
        held.failing = True
        return
    held.failing = False
    stamp, overrides = outcome
    if overrides is not None and held.writes == writes:
        held.loaded, held.stamp = overrides, stamp
        held.reloads += 1


async def refresh_overrides(datasette: Datasette) -> Mapping[str, StoredOverride]:
    """Check now for writes by other processes, as the check every ``REFRESH_SECONDS`` does,
    and return the overrides held after it (loading them first if they are not yet loaded).

    A check under way is waited for and then another one made, since it may have read the
    database before the write that prompted this call. A failure to check is logged, once
    until a check succeeds, and never raised: what was held is returned.

    Raises:
        Exception: Only when they were not loaded yet and that first read failed (as
            ``load_overrides`` raises it).
    """
    held = _held(datasette)
    if held.loaded is None:
        return await load_overrides(datasette)
    loop = asyncio.get_running_loop()
    under_way = held.checking
    if under_way is not None and not under_way.done() and under_way.get_loop() is loop:
        await asyncio.shield(under_way)
    await asyncio.shield(_check_in(loop, datasette, held))
    return held.loaded


def _remember(held: _Held, purpose: str, stored: StoredOverride) -> None:
    """Hold ``stored``, just written by this process, in a new mapping; keep the stamp.

    A check under way, which may have read the database before the write, is not applied over
    it. The stamp stays as it was, so the next check finds the write's audit row and reads
    every override again, with any write by another process not seen yet.
    """
    held.loaded = MappingProxyType({**(held.loaded or NO_OVERRIDES), purpose: stored})
    held.writes += 1


async def load_overrides(datasette: Datasette) -> Mapping[str, StoredOverride]:
    """Create the tables if missing, read every override into memory, and return them.

    Once loaded they stay in memory: calling this again costs nothing, but when the last check
    for writes by other processes is ``REFRESH_SECONDS`` old, it waits for one.
    """
    held = _held(datasette)
    loop = asyncio.get_running_loop()
    if held.loaded is not None:
        if _stale(held):
            await asyncio.shield(_check_in(loop, datasette, held))
        return held.loaded
    task = held.loading
    if (
        task is None
        or task.get_loop() is not loop
        or (task.done() and (task.cancelled() or task.exception() is not None))
    ):
        task = held.loading = loop.create_task(_load(datasette))
    return await asyncio.shield(task)


async def _load(datasette: Datasette) -> Mapping[str, StoredOverride]:
    db = datasette.get_internal_database()
    try:
        await db.execute_write_script(SCHEMA)
        stamp, overrides = await db.execute_fn(_read)
    except Exception as error:
        logger.warning("datasette-llm: cannot read the routing overrides: %s", error)
        raise
    held = _held(datasette)
    if held.loaded is None:  # the first read to finish is kept
        held.loaded, held.stamp, held.checked = overrides, stamp, time.monotonic()
    return held.loaded


def _stamp(conn: sqlite3.Connection) -> int:
    """Return the id of the latest audit row (0: none): every write adds one, in its transaction."""
    return int(conn.execute(f"SELECT max(id) FROM {AUDIT_TABLE}").fetchone()[0] or 0)


def _every(conn: sqlite3.Connection) -> Mapping[str, StoredOverride]:
    rows = conn.execute(
        f"SELECT purpose, override, version, updated_by, updated_at FROM {OVERRIDES_TABLE}"
    ).fetchall()
    return MappingProxyType({str(row[0]): _stored(tuple(row)) for row in rows})


def _read(conn: sqlite3.Connection) -> tuple[int, Mapping[str, StoredOverride]]:
    """Return the stamp, then every override (a write between the two is read at the next check)."""
    return _stamp(conn), _every(conn)


def _stored(row: tuple[object, ...]) -> StoredOverride:
    purpose, text, version, updated_by, updated_at = row
    try:
        override = RouteOverride.from_json(json.loads(str(text)))
    except ValueError:
        override = _NOTHING
    return StoredOverride(
        purpose=str(purpose),
        override=override,
        version=int(str(version)),
        updated_by=None if updated_by is None else str(updated_by),
        updated_at=str(updated_at),
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _dumps(override: RouteOverride) -> str:
    return json.dumps(override.to_json(), sort_keys=True)


async def save_override(
    datasette: Datasette,
    purpose: str,
    override: RouteOverride,
    *,
    based_on: int,
    actor_id: str | None,
) -> StoredOverride:
    """Store ``override`` for ``purpose`` if its version is still ``based_on``; audit the write.

    The check and the write happen together on Datasette's write connection, in one
    transaction. The next ``config_for`` sees the change.

    Raises:
        OverrideConflict: The purpose is at another version (the stored one is kept).
    """
    await load_overrides(datasette)
    db = datasette.get_internal_database()
    at = _now()

    def write(conn: sqlite3.Connection) -> tuple[bool, StoredOverride]:
        row = conn.execute(
            f"SELECT purpose, override, version, updated_by, updated_at FROM {OVERRIDES_TABLE} "
            "WHERE purpose = ?",
            [purpose],
        ).fetchone()
        current = None if row is None else _stored(tuple(row))
        version = 0 if current is None else current.version
        if version != based_on:
            # Behind (someone wrote since) or ahead (the store lost writes): never a write.
            return False, current or StoredOverride(purpose, _NOTHING, 0, None, at)
        stored = StoredOverride(purpose, override, version + 1, actor_id, at)
        conn.execute(
            f"INSERT INTO {OVERRIDES_TABLE} (purpose, override, version, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (purpose) DO UPDATE SET "
            "override = excluded.override, version = excluded.version, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            [purpose, _dumps(override), stored.version, actor_id, at],
        )
        conn.execute(
            f"INSERT INTO {AUDIT_TABLE} (purpose, version, actor_id, at, before, after) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                purpose,
                stored.version,
                actor_id,
                at,
                _dumps(_NOTHING if current is None else current.override),
                _dumps(override),
            ],
        )
        return True, stored

    outcome: tuple[bool, StoredOverride] = await db.execute_write_fn(write)
    written, stored = outcome
    held = _held(datasette)
    if stored.version:
        _remember(held, purpose, stored)
    if not written:
        raise OverrideConflict(purpose, based_on, stored)
    return stored


async def audit_entries(
    datasette: Datasette, purpose: str | None = None, limit: int = 50
) -> list[AuditEntry]:
    """Return the latest writes, newest first: of ``purpose``, or of every purpose."""
    await load_overrides(datasette)
    where, params = ("WHERE purpose = ?", [purpose]) if purpose is not None else ("", [])
    result = await datasette.get_internal_database().execute(
        f"SELECT purpose, version, actor_id, at, before, after FROM {AUDIT_TABLE} {where} "
        "ORDER BY id DESC LIMIT ?",
        [*params, limit],
    )
    entries: list[AuditEntry] = []
    for row in result.rows:
        name, version, actor, at, before, after = tuple(row)
        entries.append(
            AuditEntry(
                purpose=str(name),
                version=int(str(version)),
                actor_id=None if actor is None else str(actor),
                at=str(at),
                before=_parsed(before),
                after=_parsed(after),
            )
        )
    return entries


def _parsed(text: object) -> RouteOverride:
    try:
        return RouteOverride.from_json(json.loads(str(text)))
    except ValueError:
        return _NOTHING
