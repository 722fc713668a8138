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
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from ..config.values import CONFIG_ROOT
from ..errors import ConfigProblem, ConfigurationError
from ..prompting.attempts import falling_back
from ..prompting.limits import cooling_models
from ..routing.models import current_registry
from ..routing.overlay import config_for
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
    "Failure",
    "PurposeStatus",
    "StatusKind",
    "build_status",
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


async def build_status(
    datasette: Datasette, report: RoutingReport, config: LLMConfig, usage: UsageSummary
) -> tuple[tuple[PurposeStatus, ...], tuple[Failure, ...]]:
    """Return each purpose's status, in the report's order, and the latest failed attempts."""
    registry = current_registry(datasette)
    fallen = falling_back(datasette)
    cooling = cooling_models(datasette)
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
