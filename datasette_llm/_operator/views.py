"""The routing page ``/-/llm`` and ``/-/llm.json``, for actors allowed ``llm-view-routing``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from datasette import Forbidden
from datasette.utils.asgi import Response

from ..errors import ConfigurationError
from ..routing.overlay import config_for
from ..routing.permissions import can_manage_routing, is_root
from ..usage.summary import build_usage
from .chart import build_chart
from .edit import build_edits
from .report import build_report, who_may_use, with_may_use

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

__all__ = ["ROUTE_PATTERN", "VIEW_ROUTING", "can_view_routing", "routing_view"]

VIEW_ROUTING: Final = "llm-view-routing"
"""The action that guards the routing page; denied by default, granted to root."""

ROUTE_PATTERN: Final = r"^/-/llm(?P<format>\.json)?$"
"""Matches ``/-/llm`` and ``/-/llm.json``."""

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
    """Show every purpose's routing and its usage; 403 unless the actor may ``llm-view-routing``."""
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
    usage = await build_usage(datasette, config_for(datasette))
    names = [purpose.name for purpose in report.purposes]
    may_use = who_may_use(datasette, names)
    can_manage = await can_manage_routing(datasette, request.actor)
    edits = await build_edits(datasette, names, can_manage=can_manage)
    if as_json:
        document = with_may_use(report.to_json(), may_use)
        overrides = edits.to_json()
        return Response.json(
            {"ok": True, **document, "usage": usage.to_json(), "overrides": overrides}
        )
    context = {
        "report": report,
        "problems": report.problems,
        "step_labels": STEP_LABELS,
        "usage": usage,
        "chart": build_chart(usage),
        "edits": edits,
        "may_use": may_use,
        "can_test_routes": can_manage,
    }
    html = await datasette.render_template("llm_routing.html", context, request=request)
    return Response.html(html)
