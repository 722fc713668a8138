"""``POST /-/llm/purposes/<name>``: store a purpose's routing override, for ``llm-manage-routing``.

The form on ``/-/llm`` posts here (with Datasette's CSRF token). The write is refused with a
403 for an actor without the action or for a purpose locked in datasette.yaml, with a 400 page
saying why for a field that cannot be read or a model the policy refuses, and with a 409 page
when the purpose changed since the form was loaded: that page shows what changed and the
refused edit, which can be applied over the new version deliberately. A GET changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

from datasette import Forbidden
from datasette.utils.asgi import Response

from ..actors import actor_id
from ..config_source import layers_for
from ..errors import ConfigurationError, nearest
from ..models import current_registry
from ..overlay import LOCKED
from ..overrides import (
    OverrideConflict,
    RouteOverride,
    audit_entries,
    load_overrides,
    save_override,
    version_of,
)
from ..permissions import MANAGE_ROUTING, can_manage_routing
from ..purpose_catalog import get_purposes
from .edit_form import FormError, override_from_form
from .routing_edits import check_override, purpose_edit

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

    from ..overlay import Overlaid

__all__ = ["EDIT_ROUTE_PATTERN", "edit_view"]

EDIT_ROUTE_PATTERN: Final = r"^/-/llm/purposes/(?P<name>[^/]+)$"
"""Matches ``/-/llm/purposes/<name>``, the name percent-encoded."""

_TEMPLATE: Final = "llm_routing_edit.html"


def _known(datasette: Datasette, layers: Overlaid) -> list[str]:
    names = [purpose.name for purpose in get_purposes(datasette)]
    names.extend(layers.base.purposes)
    return list(dict.fromkeys(names))


async def _page(
    datasette: Datasette,
    request: Request,
    status: int,
    context: Mapping[str, object],
) -> Response:
    html = await datasette.render_template(_TEMPLATE, dict(context), request=request)
    return Response.html(html, status=status)


async def _refused(
    datasette: Datasette,
    request: Request,
    layers: Overlaid,
    name: str,
    form: Mapping[str, str],
    version: int,
    error: str,
) -> Response:
    edit = await purpose_edit(
        datasette, layers, name, current_registry(), form=form, version=version
    )
    context: dict[str, object] = {"name": name, "error": error, "edit": edit}
    return await _page(datasette, request, 400, context)


async def edit_view(datasette: Datasette, request: Request) -> Response:
    """Store the submitted override of one purpose; 403 unless ``llm-manage-routing``."""
    if not await can_manage_routing(datasette, request.actor):
        raise Forbidden(
            f"Permission denied: changing the LLM routing needs the {MANAGE_ROUTING!r} action. "
            "Sign in as root, or grant it under permissions: in datasette.yaml."
        )
    name = unquote(request.url_vars["name"])
    if request.method != "POST":
        return Response.text(
            "Send the form on /-/llm to change a purpose's routing: a GET changes nothing.",
            status=405,
            headers={"Allow": "POST"},
        )
    await load_overrides(datasette)
    try:
        layers = layers_for(datasette)
    except ConfigurationError as error:
        problems: dict[str, object] = {
            "name": name,
            "error": f"datasette.yaml has problems; fix them first. {error}",
            "edit": None,
        }
        return await _page(datasette, request, 409, problems)
    known = _known(datasette, layers)
    if name not in known:
        suggestion = nearest(name, known)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        unknown: dict[str, object] = {
            "name": name,
            "error": f"No purpose is called {name!r}: no plugin registers it and none is "
            f"configured.{hint}",
            "edit": None,
        }
        return await _page(datasette, request, 404, unknown)
    written = layers.base.purpose(name)
    if written is not None and written.locked:
        raise Forbidden(f"The routing of purpose {name!r} cannot be changed here: {LOCKED}.")
    form = await request.post_vars()
    overrides = await load_overrides(datasette)
    try:
        version = int(form.get("version", ""))
    except ValueError:
        version = version_of(overrides, name)
        message = "the form has no version: reload /-/llm and make the change again."
        return await _refused(datasette, request, layers, name, form, version, message)
    try:
        override = (
            RouteOverride() if form.get("action") == "revert" else override_from_form(form, written)
        )
    except FormError as error:
        return await _refused(datasette, request, layers, name, form, version, str(error))
    if not override.empty:
        reason = await check_override(datasette, layers, name, override, current_registry())
        if reason is not None:
            return await _refused(datasette, request, layers, name, form, version, reason)
    stored = overrides.get(name)
    if version == version_of(overrides, name) and override == (
        RouteOverride() if stored is None else stored.override
    ):
        datasette.add_message(request, f"Routing of purpose {name!r}: nothing changed.")
        return Response.redirect(datasette.urls.path("/-/llm") + "#overrides")
    try:
        saved = await save_override(
            datasette, name, override, based_on=version, actor_id=actor_id(request.actor)
        )
    except OverrideConflict as conflict:
        changes = [
            entry
            for entry in await audit_entries(datasette, name)
            if entry.version > conflict.based_on
        ]
        edit = await purpose_edit(
            datasette,
            layers_for(datasette),
            name,
            current_registry(),
            form=form,
            version=conflict.current.version,
        )
        context: dict[str, object] = {
            "name": name,
            "error": str(conflict),
            "conflict": conflict,
            "changes": list(reversed(changes)),
            "edit": edit,
            "refused": override,
        }
        return await _page(datasette, request, 409, context)
    what = "reverted to datasette.yaml" if override.empty else "saved"
    datasette.add_message(request, f"Routing of purpose {name!r} {what} (version {saved.version}).")
    return Response.redirect(datasette.urls.path("/-/llm") + "#overrides")
