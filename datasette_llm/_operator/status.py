"""What calls are getting now, purpose by purpose: the status that leads the routing page.

A purpose is

- ``no_key``: its configured model has no API key, so routing sends its calls elsewhere (or
  nowhere), whatever else happens;
- ``over_budget``: its budget for the period is spent: its prompts are refused, or go to its
  fallbacks (``then: fallback``);
- ``degraded``: a fallback answers its prompts instead of its routed model (since the routed
  model's last failure, until it answers again), or its routed model is cooling down after
  rate limits;
- ``ok`` otherwise.

Computed from what this process's calls got (which purposes fall back: ``prompting.attempts``;
which models cool down: ``prompting.limits``), the usage ledger (each purpose's last failure,
the recent failures, what budgets have spent: ``usage.summary``) and routing (keys). A process
that has made no call yet knows only the ledger and the configuration.

Beside it, what the processes serving this Datasette share (``CoordinationView``: through Redis
or not, and what this process keeps of each limit meanwhile), and whose rows the usage ledger
holds (``LedgerSource``): each process writes its own, to its internal database unless
``usage: {database: ...}`` names another, so the page and ``datasette llm usage`` say which
processes' rows they read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from ..config.values import CONFIG_ROOT, shown_url
from ..coordination import PING_SECONDS, RedisCoordinator, RedisMissing, coordinator_for
from ..errors import ConfigProblem, ConfigurationError
from ..prompting.attempts import falling_back
from ..prompting.limits import cooling_models
from ..routing.models import current_registry
from ..routing.overlay import config_for
from ..state import Slot, state_of
from ..usage.ledger import TABLE, ledger_for, table_exists
from ..usage.summary import utc_text
from .report import missing_key

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config.values import LLMConfig
    from ..usage.summary import UsageSummary
    from .report import RoutingReport

__all__ = [
    "RECENT_FAILURES",
    "CoordinationView",
    "Failure",
    "LedgerSource",
    "PurposeStatus",
    "StatusKind",
    "build_coordination",
    "build_status",
    "coordination_problems",
    "internal_not_yet",
    "ledger_source",
    "status_problems",
]

StatusKind: TypeAlias = Literal["ok", "degraded", "over_budget", "no_key"]
"""What calls for a purpose are getting now (see the module)."""

RECENT_FAILURES: Final = 20
"""How many of the latest failed attempts the page lists."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, as the ledger keeps it.

    Attributes:
        time: When it started (seconds since the epoch, UTC).
        purpose: Its purpose, or ``None``.
        model: The model it went to.
        kind: The error kind.
        message: The error in short (keys redacted), if the ledger has it.
    """

    time: float
    purpose: str | None
    model: str
    kind: str
    message: str | None

    @property
    def when(self) -> str:
        """Its time, as UTC text."""
        return utc_text(self.time)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "time": self.time,
            "when": self.when,
            "purpose": self.purpose,
            "model": self.model,
            "kind": self.kind,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class PurposeStatus:
    """What one purpose's calls are getting now.

    Attributes:
        name: The purpose.
        kind: ``ok``, ``degraded``, ``over_budget`` or ``no_key``.
        model: The model routing sends its calls to.
        answering: The fallback answering its prompts instead, when one does.
        reasons: What makes it other than ``ok``, in words, most pressing first.
        last_failure: Its latest failed attempt in the ledger, if any.
        missing_secret: For ``no_key``, the secret to set (the page links to its form).
    """

    name: str
    kind: StatusKind
    model: str | None
    answering: str | None
    reasons: tuple[str, ...]
    last_failure: Failure | None
    missing_secret: str | None = None

    @property
    def text(self) -> str:
        """The status and its reasons, in one line."""
        label = self.kind.replace("_", " ")
        return label if not self.reasons else f"{label}: {'; '.join(self.reasons)}"

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        last = None if self.last_failure is None else self.last_failure.to_json()
        return {
            "name": self.name,
            "status": self.kind,
            "model": self.model,
            "answering": self.answering,
            "reasons": list(self.reasons),
            "text": self.text,
            "last_failure": last,
            "missing_secret": self.missing_secret,
        }


async def _failures(datasette: Datasette) -> tuple[dict[str | None, Failure], list[Failure]]:
    """Each purpose's latest failed attempt, and the latest failed attempts of all."""
    if not config_for(datasette).usage.enabled:
        return {}, []
    ledger = ledger_for(datasette)
    try:
        if ledger.pending:
            await ledger.flush()
        if not await table_exists(ledger.database_object()):
            return {}, []  # nothing recorded yet: a page view creates no table
        db = await ledger.ensure_table()  # one of an earlier version gains its columns
    except ConfigurationError:
        return {}, []  # usage.database is not attached: the configuration's problems say so
    failed = "outcome NOT IN ('ok', 'cancelled')"
    latest = await db.execute(
        f"SELECT time, purpose, model, outcome, error FROM {TABLE} WHERE rowid IN ("
        f"SELECT max(rowid) FROM {TABLE} WHERE {failed} GROUP BY purpose)"
    )
    recent = await db.execute(
        f"SELECT time, purpose, model, outcome, error FROM {TABLE} WHERE {failed} "
        "ORDER BY time DESC LIMIT ?",
        [RECENT_FAILURES],
    )

    def failure(row: Sequence[object]) -> Failure:
        moment, purpose, model, kind, message = (row[index] for index in range(5))
        return Failure(
            float(str(moment)),
            None if purpose is None else str(purpose),
            str(model),
            str(kind),
            None if message is None else str(message),
        )

    by_purpose = {}
    for row in latest.rows:
        found = failure(row)
        by_purpose[found.purpose] = found
    return by_purpose, [failure(row) for row in recent.rows]


async def _cooling(
    datasette: Datasette, report: RoutingReport, config: LLMConfig
) -> dict[str, float]:
    """The routed models cooling down now, with the seconds left: as this process learned,
    and with ``coordination`` configured as every process's coordinator says (another
    process's 429 keeps this one off the model too)."""
    cooling = cooling_models(datasette)
    if config.coordination is None:
        return cooling
    try:
        coordinator = coordinator_for(datasette, config.coordination)
    except RedisMissing:
        return cooling  # the coordination section and check say so
    routed = {purpose.route.model_id for purpose in report.purposes} - {None, *cooling}
    for model_id in sorted(model for model in routed if model is not None):
        wait = await coordinator.cooling(model_id)
        if wait > 0:
            cooling[model_id] = wait
    return cooling


async def build_status(
    datasette: Datasette, report: RoutingReport, config: LLMConfig, usage: UsageSummary
) -> tuple[tuple[PurposeStatus, ...], tuple[Failure, ...]]:
    """Return each purpose's status, in the report's order, and the latest failed attempts."""
    registry = current_registry(datasette)
    fallen = falling_back(datasette)
    cooling = await _cooling(datasette, report, config)
    last, recent = await _failures(datasette)
    spent = {
        budget.purpose: budget for budget in usage.budgets if budget.spent >= budget.budget.usd
    }
    now = time.time()
    statuses = []
    for purpose in report.purposes:
        name, model = purpose.name, purpose.route.model_id
        reasons: list[str] = []
        kind: StatusKind = "ok"
        secret = None
        configured = config.purpose(name)
        ref = None if configured is None else configured.model
        if ref is not None and model != registry.canonical(ref.model_id):
            status = await missing_key(datasette, config, registry, name, ref)
            if status is not None and config.require_keys:
                kind = "no_key"
                secret = status.secret_name
                goes = f"its calls go to {model!r}" if model else "its calls fail"
                reasons.append(
                    f"{ref.model_id!r} has no API key (set the secret {status.secret_name}), "
                    f"so {goes}"
                )
        budget = spent.get(name)
        if budget is not None:
            kind = "over_budget" if kind == "ok" else kind
            then = "go to its fallbacks" if budget.budget.then == "fallback" else "are refused"
            reasons.append(
                f"its ${budget.budget.usd:g} budget for the {budget.budget.per} is spent: its "
                f"prompts {then}"
            )
        answering = fallen.get((name, model)) if model is not None else None
        if answering is not None:
            kind = "degraded" if kind == "ok" else kind
            reasons.append(f"{answering!r} answers its prompts instead of {model!r}")
        wait = cooling.get(model or "")
        if wait:
            kind = "degraded" if kind == "ok" else kind
            until = utc_text(now + wait)
            reasons.append(f"{model!r} cools down after rate limits until {until}")
        failure = last.get(name)
        if kind == "degraded" and failure is not None:
            reasons.append(f"last failure {failure.when}: {failure.kind}")
        statuses.append(
            PurposeStatus(name, kind, model, answering, tuple(reasons), failure, secret)
        )
    return tuple(statuses), tuple(recent)


async def status_problems(
    datasette: Datasette, report: RoutingReport, config: LLMConfig
) -> list[ConfigProblem]:
    """A warning for each purpose over its budget or degraded, for ``datasette llm check``
    (a purpose without a key has its own warning there, from ``serving_problems``). With
    ``--internal``, the ledger of the served Datasette says what its calls got."""
    from ..usage.summary import build_usage

    try:
        usage = await build_usage(datasette, config)
    except ConfigurationError:
        return []  # usage.database is not attached: the configuration's problems say so
    statuses, _ = await build_status(datasette, report, config, usage)
    return [
        ConfigProblem(
            f"{CONFIG_ROOT}.purposes.{status.name}",
            f"purpose {status.name!r} is {status.text}.",
            "warning",
        )
        for status in statuses
        if status.kind in ("over_budget", "degraded")
    ]


# What the processes share, and whose rows the ledger holds.


@dataclass(frozen=True, slots=True)
class CoordinationView:
    """What the processes serving this Datasette share now: the page's "Coordination".

    Attributes:
        backend: ``"local"`` (no ``coordination`` configured) or ``"redis"``.
        shared: Whether every process's limits, cool-downs and budgets are shared now.
        where: The Redis URL with any password hidden, or ``None``.
        prefix: The start of every Redis key, or ``None``.
        since: When ``shared`` last changed (seconds since the epoch), or ``None``: local, or
            what a ping just found (``pinged``).
        problem: Why Redis cannot be reached, while it cannot (any password hidden).
        processes: How many processes ``coordination.processes`` says share the limits.
        share: What this process keeps of each model's ``rpm`` and ``concurrency`` now:
            ``"shared"`` (one limit for every process, in Redis), ``"1/N"`` (its share while
            Redis cannot be reached) or ``"all"`` (each process allows every limit in full).
        pinged: Whether this is what a ping just found (the ``datasette llm`` commands), not
            what this process's calls found.
    """

    backend: Literal["local", "redis"]
    shared: bool
    where: str | None
    prefix: str | None
    since: float | None
    problem: str | None
    processes: int | None
    share: str
    pinged: bool = False

    @property
    def since_text(self) -> str | None:
        """``since`` as UTC text."""
        return None if self.since is None else utc_text(self.since)

    @property
    def kept(self) -> str:
        """What each process keeps of each limit while Redis cannot be reached, in words."""
        if self.processes is None or self.processes == 1:
            return "every limit in full"
        return f"1/{self.processes} of each model's rpm and concurrency"

    @property
    def text(self) -> str:
        """The coordination in one line."""
        if self.backend == "local":
            return (
                "Coordination: none: each process keeps its own rpm and concurrency limits, "
                "cool-downs and budget holds; to share them among several processes, configure "
                "coordination: {redis: ...}."
            )
        when = " (just now)" if self.pinged else ""
        if self.since is not None and not self.pinged:
            when = f" (since {self.since_text})"
        if self.shared:
            down = (
                f"each of the {self.processes} processes keeps {self.kept}"
                if self.processes
                else "each process keeps every limit in full (set processes: N to divide them)"
            )
            return (
                f"Coordination: shared through Redis at {self.where}{when}: every "
                f"process's limits, cool-downs and budgets; while Redis is down, {down}."
            )
        return (
            f"Coordination: NOT shared{when}: Redis at {self.where} cannot be reached "
            f"({self.problem}); meanwhile this process keeps {self.kept}, and its own "
            "cool-downs and budget holds."
        )

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "backend": self.backend,
            "shared": self.shared,
            "where": self.where,
            "prefix": self.prefix,
            "since": self.since,
            "since_text": self.since_text,
            "problem": self.problem,
            "processes": self.processes,
            "share": self.share,
            "text": self.text,
        }


async def build_coordination(
    datasette: Datasette, config: LLMConfig, *, ping: float | None = None
) -> CoordinationView:
    """Return what the processes serving ``datasette`` share now, as its coordinator says.

    Args:
        ping: Seconds to wait for Redis, to ask it now (``datasette llm`` commands, whose
            coordinator has not talked to Redis yet), or ``None`` to report the status.
    """
    settings = config.coordination
    if settings is None:
        return CoordinationView("local", False, None, None, None, None, None, "all")
    processes = settings.processes
    alone = "all" if processes is None or processes == 1 else f"1/{processes}"
    where = shown_url(settings.redis)
    try:
        coordinator = coordinator_for(datasette, settings)
    except RedisMissing as error:
        return CoordinationView(
            "redis", False, where, settings.prefix, None, str(error), processes, alone
        )
    status = coordinator.status
    shared, problem = status.shared, status.problem
    since: float | None = status.since
    if ping is not None and isinstance(coordinator, RedisCoordinator):
        problem = await coordinator.ping(ping)
        shared, since = problem is None, None
    share = "shared" if shared else alone
    return CoordinationView(
        "redis", shared, where, settings.prefix, since, problem, processes, share, ping is not None
    )


async def coordination_problems(datasette: Datasette, config: LLMConfig) -> list[ConfigProblem]:
    """For ``datasette llm check``: a warning when ``coordination`` names a Redis that does not
    answer a ping within ``PING_SECONDS`` now; an error when redis-py is not installed."""
    settings = config.coordination
    if settings is None:
        return []
    path = f"{CONFIG_ROOT}.coordination.redis"
    try:
        coordinator_for(datasette, settings)
    except RedisMissing as error:
        return [ConfigProblem(path, str(error))]
    view = await build_coordination(datasette, config, ping=PING_SECONDS)
    if view.shared:
        return []
    return [
        ConfigProblem(
            path,
            f"Redis at {view.where} cannot be reached now ({view.problem}): until it can, each "
            f"process keeps {view.kept}, and its own cool-downs and budget holds. Start it, or "
            "correct the URL.",
            "warning",
        )
    ]


_INTERNAL_NOT_YET: Final[Slot[str]] = Slot("the --internal file that does not exist yet")


def internal_not_yet(datasette: Datasette, path: str) -> None:
    """Note that ``datasette`` reads an empty internal database in place of ``path``, the
    ``--internal`` file a ``datasette llm`` command was given before it exists: the ledger's
    source names it (``ledger_source``)."""
    state_of(datasette).put(_INTERNAL_NOT_YET, path)


@dataclass(frozen=True, slots=True)
class LedgerSource:
    """Whose rows the usage ledger read holds: each process writes its own.

    Attributes:
        database: The database ``usage: {database: ...}`` names, or ``None``: Datasette's
            internal database.
        path: Its file, or ``None`` when only this process has it (in memory, or the
            temporary internal database of a Datasette started without ``--internal``).
        text: Whose rows they are, in a sentence or two.
    """

    database: str | None
    path: str | None
    text: str

    @property
    def own(self) -> bool:
        """Whether the rows are this process's alone."""
        return self.path is None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {"database": self.database, "path": self.path, "own": self.own, "text": self.text}


def ledger_source(datasette: Datasette, config: LLMConfig) -> LedgerSource:
    """Return whose rows the ledger of ``datasette`` holds: this process's alone, or those of
    every process writing to the same file (with ``coordination`` configured, the page says
    where the other processes' rows are)."""
    database = config.usage.database
    coordinated = config.coordination is not None
    not_yet = state_of(datasette).get(_INTERNAL_NOT_YET)
    if database is None and not_yet is not None:
        text = (
            f"The ledger read here holds the rows of every process started with --internal "
            f"{not_yet}: none yet, since that file does not exist yet."
        )
        return LedgerSource(None, not_yet, text)
    if database is None:
        internal = datasette.get_internal_database()
        # Datasette 1.0a23 keeps a temporary internal database in memory (it has no
        # is_temp_disk); later ones in a temporary file.
        temporary = getattr(internal, "is_temp_disk", False)
        if temporary or internal.is_memory or internal.path is None:
            text = (
                "The ledger read here holds this process's rows alone: its internal database "
                "is temporary (started without --internal), so they go when it stops."
            )
            if coordinated:
                text += (
                    " The other processes sharing its limits keep theirs in their own "
                    "internal databases."
                )
            return LedgerSource(None, None, text)
        path = str(internal.path)
        text = (
            f"The ledger read here holds the rows of every process started with --internal {path}."
        )
        if coordinated:
            text += (
                " A process started with another internal database keeps its rows there: to "
                "read every process's rows here, start them all with this --internal file, or "
                "name a database file they all serve with usage: {database: ...}."
            )
        return LedgerSource(None, path, text)
    db = datasette.databases.get(database)
    if db is None or db.is_memory or db.path is None:
        return LedgerSource(
            database,
            None,
            f"The ledger read here holds this process's rows alone: {database!r} is in memory.",
        )
    path = str(db.path)
    return LedgerSource(
        database,
        path,
        f"The ledger read here holds the rows of every process serving {path} "
        f"(usage: {{database: {database}}}).",
    )
