"""The routing page ``/-/llm`` and ``/-/llm.json``, for actors allowed ``llm-view-routing``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from datasette import Forbidden
from datasette.utils.asgi import Response

from ..errors import ConfigurationError, nearest
from ..routing.overlay import config_for
from ..routing.permissions import can_manage_routing, explain, is_root, may_use
from ..usage.summary import Totals, UsageLine, UsageSummary, build_usage
from .chart import build_chart
from .edit import build_edits, edit_view
from .live import known_purposes, unknown_purpose
from .report import build_report, who_may_use, with_may_use
from .status import build_coordination, build_status, ledger_source

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

__all__ = [
    "CHECK_ACTOR_PATTERN",
    "purpose_view",
    "ROUTE_PATTERN",
    "VIEW_ROUTING",
    "can_view_routing",
    "check_actor_view",
    "routing_view",
]

VIEW_ROUTING: Final = "llm-view-routing"
"""The action that guards the routing page; denied by default, granted to root."""

ROUTE_PATTERN: Final = r"^/-/llm(?P<format>\.json)?$"
"""Matches ``/-/llm`` and ``/-/llm.json``."""

CHECK_ACTOR_PATTERN: Final = r"^/-/llm/check-actor(?P<format>\.json)?$"
"""Matches ``/-/llm/check-actor`` and ``/-/llm/check-actor.json``."""

STEP_LABELS: Final = {
    "explicit": "explicit model_id",
    "hook": "llm_default_model hook",
    "purpose_config": "purposes.<name>.model",
    "purpose_default": "the purpose's recommended model",
    "default_model": "default_model",
}


async def can_view_routing(datasette: Datasette, actor: Mapping[str, object] | None) -> bool:
    """Return whether ``actor`` may see the routing page.

    The root actor (``datasette --root``) always may, even when a ``permissions:`` block in
    datasette.yaml grants ``llm-view-routing`` only to others; otherwise Datasette decides.
    """
    if is_root(datasette, actor):
        return True
    return await datasette.allowed(action=VIEW_ROUTING, actor=actor)


async def routing_view(datasette: Datasette, request: Request) -> Response:
    """Show every purpose's routing and its usage, what the processes share (coordination) and
    whose rows the ledger holds; 403 unless the actor may ``llm-view-routing``."""
    as_json = bool(request.url_vars.get("format"))
    if not await can_view_routing(datasette, request.actor):
        message = (
            f"Permission denied: viewing the LLM routing needs the {VIEW_ROUTING!r} action. "
            "Sign in as root, or grant it under permissions: in datasette.yaml."
        )
        if as_json:
            return Response.json({"ok": False, "error": message, "status": 403}, status=403)
        raise Forbidden(message)
    try:
        report = await build_report(datasette)
    except ConfigurationError as error:
        problems = [
            {"path": problem.path, "message": problem.message, "severity": problem.severity}
            for problem in error.problems
        ]
        if as_json:
            return Response.json({"ok": False, "error": str(error), "problems": problems})
        html = await datasette.render_template(
            "llm_routing.html",
            {"report": None, "problems": error.problems, "step_labels": STEP_LABELS},
            request=request,
        )
        return Response.html(html)
    config = config_for(datasette)
    usage = await build_usage(datasette, config)
    statuses, failures = await build_status(datasette, report, config, usage)
    names = [purpose.name for purpose in report.purposes]
    who = who_may_use(datasette, names)
    can_manage = await can_manage_routing(datasette, request.actor)
    edits = await build_edits(datasette, names, can_manage=can_manage)
    coordination = await build_coordination(datasette, config)
    ledger = ledger_source(datasette, config)
    if as_json:
        document = with_may_use(report.to_json(), who)
        overrides = edits.to_json()
        status = {
            "purposes": [purpose.to_json() for purpose in statuses],
            "recent_failures": [failure.to_json() for failure in failures],
        }
        return Response.json(
            {
                "ok": True,
                "status": status,
                "coordination": coordination.to_json(),
                **document,
                "usage": {**usage.to_json(), "ledger": ledger.to_json()},
                "overrides": overrides,
            }
        )
    context = {
        "report": report,
        "problems": report.problems,
        "step_labels": STEP_LABELS,
        "usage": usage,
        "chart": build_chart(usage),
        "edits": edits,
        "may_use": who,
        "can_test_routes": can_manage,
        "statuses": statuses,
        "coordination": coordination,
        "ledger": ledger,
        "day_spend": _day_spend(usage),
        "failures": failures,
        "period": _period(request, usage),
    }
    html = await datasette.render_template("llm_routing.html", context, request=request)
    return Response.html(html)


def _day_spend(usage: UsageSummary) -> dict[str | None, Totals]:
    """Each purpose's totals over the last 24 hours (the first window), for the overview."""
    if not usage.windows:
        return {}
    return {line.name: line.totals for line in usage.windows[0].purposes}


def _period(request: Request, usage: UsageSummary) -> str:
    """The usage window the page shows (``?period=7d``): one table with a switch, the first
    window (the last 24 hours) unless another is asked for."""
    keys = [window.window.key for window in usage.windows]
    asked = request.args.get("period")
    return asked if asked in keys else (keys[0] if keys else "")


async def check_actor_view(datasette: Datasette, request: Request) -> Response:
    """``GET /-/llm/check-actor?actor={"id": "alice"}&purpose=extract``: may that actor use that
    purpose, and which rule decided, as Datasette's own permissions debug page answers for
    its actions; for actors allowed ``llm-view-routing``. ``actor`` is the actor as JSON (an
    empty value: no actor); no ``purpose``: a call without one. Nothing is sent, nothing
    written.

    The answer is Datasette's (``allowed``, every plugin's rules included), with the rule of
    datasette-llm's configuration that decides (``routing.permissions.explain``); when the
    two differ, another plugin's rule decided, and the page says so.
    """
    as_json = bool(request.url_vars.get("format"))
    if not await can_view_routing(datasette, request.actor):
        message = f"Permission denied: checking an actor needs the {VIEW_ROUTING!r} action."
        if as_json:
            return Response.json({"ok": False, "error": message, "status": 403}, status=403)
        raise Forbidden(message)
    text = request.args.get("actor", "").strip()
    purpose = request.args.get("purpose", "").strip() or None
    error = None
    actor: dict[str, object] | None = None
    if text:
        try:
            parsed = json.loads(text)
        except ValueError as problem:
            parsed = None
            error = f'actor: not JSON ({problem}); give one such as {{"id": "alice"}}.'
        if error is None and not isinstance(parsed, dict):
            error = 'actor: expected a JSON object such as {"id": "alice"}.'
        elif error is None:
            actor = parsed
    answer: dict[str, object] | None = None
    if error is None and (text or purpose is not None):
        verdict = explain(datasette, actor, purpose)
        allowed = await may_use(datasette, actor, purpose) if actor is not None else True
        reason = verdict.reason
        if allowed != verdict.allowed:
            reason = (
                f"{'allowed' if allowed else 'refused'} by a rule another plugin adds "
                f"(datasette-llm's configuration would say: {verdict.reason})"
            )
        rule = verdict.to_json()["rule"]
        if actor is None:  # no rule decides: nothing is checked
            reason, rule = "a call without an actor is not checked: llm-use applies to actors", None
        names = known_purposes(datasette)
        # A mistyped purpose is answered as one no rule names: say that it is unknown.
        warning = None if purpose is None or purpose in names else unknown_purpose(purpose, names)
        answer = {"allowed": allowed, "reason": reason, "rule": rule, "warning": warning}
    if as_json:
        status = 400 if error is not None else 200
        body = {"ok": error is None, "actor": actor, "purpose": purpose, "error": error}
        return Response.json({**body, "answer": answer}, status=status)
    context = {
        "actor_text": text,
        "purpose": purpose or "",
        "purposes": known_purposes(datasette),
        "error": error,
        "answer": answer,
    }
    html = await datasette.render_template("llm_check_actor.html", context, request=request)
    return Response.html(html, status=400 if error is not None else 200)


@dataclass(frozen=True, slots=True)
class _PurposeWindow:
    """One window of a purpose's usage, as its page shows it."""

    key: str
    label: str
    since_text: str
    line: UsageLine | None
    actors: tuple[UsageLine, ...]
    models: tuple[UsageLine, ...]


async def purpose_view(datasette: Datasette, request: Request) -> Response:
    """``/-/llm/purposes/<name>``: one purpose's page (a GET, for actors allowed
    ``llm-view-routing``): its status and recent failures, its routing and why, its chain,
    its usage and spend by actor, its override form and changes, "Test this route". A POST is
    the override form's (``edit.edit_view``)."""
    if request.method == "POST":
        return await edit_view(datasette, request)
    if not await can_view_routing(datasette, request.actor):
        raise Forbidden(
            f"Permission denied: viewing the LLM routing needs the {VIEW_ROUTING!r} action. "
            "Sign in as root, or grant it under permissions: in datasette.yaml."
        )
    name = unquote(request.url_vars["name"])
    try:
        report = await build_report(datasette)
    except ConfigurationError as error:
        return Response.text(f"datasette.yaml has problems; see /-/llm. {error}", status=500)
    purpose = next((p for p in report.purposes if p.name == name), None)
    if purpose is None:
        names = [p.name for p in report.purposes]
        suggestion = nearest(name, names)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        return Response.text(
            f"No purpose is called {name!r}: no plugin registers it and none is configured.{hint}",
            status=404,
        )
    config = config_for(datasette)
    usage = await build_usage(datasette, config)
    statuses, failures = await build_status(datasette, report, config, usage)
    can_manage = await can_manage_routing(datasette, request.actor)
    edits = await build_edits(datasette, [name], can_manage=can_manage)
    windows = []
    for window in usage.windows:
        line = next((line for line in window.purposes if line.name == name), None)
        actors = tuple(
            UsageLine(actor.name, part.totals)
            for actor in window.actors
            for part in actor.purposes
            if part.name == name
        )
        shown = window.window
        models = window.models_of(name)
        windows.append(
            _PurposeWindow(shown.key, shown.label, shown.since_text, line, actors, models)
        )
    context = {
        "purpose": purpose,
        "status": next(status for status in statuses if status.name == name),
        "failures": [failure for failure in failures if failure.purpose == name],
        "may_use": who_may_use(datasette, [name])[name],
        "windows": windows,
        "period": _period(request, usage),
        "edit": edits.purposes[0] if can_manage else None,
        "audit": [entry for entry in edits.audit if entry.purpose == name],
        "can_test_routes": can_manage,
        "step_labels": STEP_LABELS,
    }
    html = await datasette.render_template("llm_purpose.html", context, request=request)
    return Response.html(html)
