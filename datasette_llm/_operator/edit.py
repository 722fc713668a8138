"""Live routing edits: the form on ``/-/llm``, the check an override passes, the POST storing it.

The form's fields turn text into a ``RouteOverride`` and back; a field left as datasette.yaml has
it sets nothing: only what differs becomes the override. The models a purpose's form offers, and
the models an override may name, are the installed models that
``datasette_llm.routing.policy.screen`` admits for the purpose under datasette.yaml's
configuration, as a call with no actor would be screened (keys are looked at, never read).

``POST /-/llm/purposes/<name>`` (with Datasette's CSRF token) stores the override, for actors
allowed ``llm-manage-routing``. The write is refused with a 403 for an actor without the action
or for a purpose locked in datasette.yaml, with a 400 page saying why for a field that cannot be
read or a model the policy refuses, and with a 409 page when the purpose is not at the version
the form was loaded at (another editor wrote since, or the store lost writes): that page shows
what changed and the refused edit, which can be applied over the new version deliberately.
A GET changes nothing. Once stored, the write is announced to the other processes serving the
Datasette (``datasette_llm.coordination.announce_override``): those sharing the internal
database file see it within a second anyway, and at once with ``coordination: {redis: ...}``.

A write changes only the fields its editor changed: the form sends back, hidden, each field as
it was loaded (``was_<field>``), and the stored override keeps every other field as it is
(``patched``); so does the 409 page's form, based on the new version, with only the editor's
changed fields set to theirs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, TypeAlias
from urllib.parse import quote, unquote

from datasette import Forbidden
from datasette.utils.asgi import Response

from ..actors import actor_id
from ..config.overrides import (
    AuditEntry,
    OverrideConflict,
    RouteOverride,
    StoredOverride,
    audit_entries,
    load_overrides,
    save_override,
    version_of,
)
from ..config.parser import parse_config, reference
from ..config.source import raw_section
from ..config.values import LLMConfig, PurposeConfig
from ..coordination import announce_override
from ..errors import ConfigurationError, Substituted, nearest, quoted
from ..routing.catalog import get_purposes
from ..routing.models import ModelRegistry, current_registry, option_problems
from ..routing.overlay import LOCKED, Overlaid, layers_for, overlay_section
from ..routing.permissions import MANAGE_ROUTING, can_manage_routing
from ..routing.policy import Screening, policy_for, screen
from ..routing.route import requirements_for
from .report import ROUTE_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

    from ..routing.overlay import Overlaid

__all__ = [
    "EDIT_ROUTE_PATTERN",
    "FIELDS",
    "FormError",
    "Layer",
    "LayerSource",
    "NO_FALLBACKS",
    "PurposeEdit",
    "RoutingEdits",
    "allowed_choices",
    "build_edits",
    "changed_fields",
    "check_override",
    "edit_path",
    "edit_view",
    "fallbacks_text",
    "field_texts",
    "options_text",
    "override_from_form",
    "patched",
    "purpose_edit",
    "written_values",
]


# The form's fields.

NO_FALLBACKS: Final = "none"
"""What the fallbacks field holds for "no fallbacks at all" (empty: as datasette.yaml says)."""


class FormError(ValueError):
    """A field of the routing form cannot be read; the message says which and how to fix it."""


def written_values(
    written: PurposeConfig | None,
) -> tuple[str | None, tuple[str, ...] | None, Mapping[str, object]]:
    """Return the purpose's model id, fallbacks and model options as datasette.yaml has them."""
    if written is None:
        return None, None, {}
    model = written.model
    fallbacks = None if written.fallbacks is None else tuple(r.model_id for r in written.fallbacks)
    return (
        None if model is None else str(model.model_id),
        fallbacks,
        {} if model is None else dict(model.options),
    )


def fallbacks_text(fallbacks: tuple[str, ...] | None) -> str:
    """Return the fallbacks field's text: one model id a line, ``none`` for none, else empty."""
    if fallbacks is None:
        return ""
    return "\n".join(fallbacks) if fallbacks else NO_FALLBACKS


def options_text(options: Mapping[str, object]) -> str:
    """Return the options field's text: a JSON object, or empty for no options."""
    if not options:
        return ""
    return json.dumps(_shown(options), sort_keys=True, default=str)


def _shown(options: Mapping[str, object]) -> dict[str, object]:
    """The options as the form shows them: a value from ``$env``/``$file`` by where it is from."""
    return {
        name: quoted(value) if isinstance(value, Substituted) else value
        for name, value in options.items()
    }


def _fallbacks(text: str) -> tuple[str, ...] | None:
    names = [name.strip() for line in text.splitlines() for name in line.split(",")]
    names = [name for name in names if name]
    if not names:
        return None
    if [name.lower() for name in names] == [NO_FALLBACKS]:
        return ()
    return tuple(dict.fromkeys(names))


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _options(text: str) -> dict[str, object]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as error:
            raise FormError(f"options: not a JSON object ({error}).") from None
        if not isinstance(parsed, dict):
            raise FormError('options: expected a JSON object such as {"temperature": 0.2}.')
        options: dict[str, object] = dict(parsed)
    else:
        options = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, equals, value = line.partition("=")
            if not equals or not name.strip():
                raise FormError(
                    f"options, line {number}: expected name=value (such as temperature=0.2), "
                    "or give a JSON object."
                )
            options[name.strip()] = _value(value.strip())
    for name, option in options.items():
        if reference(option) is not None:
            raise FormError(
                f"options: {name} reads an environment variable or a file; only datasette.yaml "
                "may do that. Give the value itself."
            )
    return options


FIELDS: Final = ("model", "fallbacks", "options")
"""The routing form's fields, each one value of a purpose's override."""


def field_texts(override: RouteOverride | None, written: PurposeConfig | None) -> dict[str, str]:
    """Each field's text for ``override`` over datasette.yaml's ``written`` values (``None``:
    as datasette.yaml says): what the form shows."""
    _, fallbacks_written, options_written = written_values(written)
    model = None if override is None else override.model
    fallbacks = None if override is None else override.fallbacks
    options = None if override is None else override.options
    return {
        "model": model or "",
        "fallbacks": fallbacks_text(fallbacks_written if fallbacks is None else fallbacks),
        "options": options_text(options_written if options is None else options),
    }


def _normal(field: str, text: str) -> object:
    """A field's text as the value it stands for, so that two ways to write it compare equal."""
    if field == "model":
        return text.strip()
    if field == "fallbacks":
        return _fallbacks(text)
    try:
        return _options(text)
    except FormError:
        return text.strip()


def changed_fields(form: Mapping[str, str]) -> frozenset[str]:
    """The fields the editor changed: those whose value differs from the one the form was
    loaded with (its hidden ``was_<field>``); every field, for a form without them."""
    return frozenset(
        field
        for field in FIELDS
        if f"was_{field}" not in form
        or _normal(field, form.get(field, "")) != _normal(field, form[f"was_{field}"])
    )


def patched(
    current: RouteOverride, submitted: RouteOverride, changed: frozenset[str]
) -> RouteOverride:
    """``current`` with the ``changed`` fields taken from ``submitted``: a write changes only
    what its editor changed, whatever another editor wrote since the form was loaded."""
    return RouteOverride(
        model=submitted.model if "model" in changed else current.model,
        fallbacks=submitted.fallbacks if "fallbacks" in changed else current.fallbacks,
        options=submitted.options if "options" in changed else current.options,
    )


def override_from_form(form: Mapping[str, str], written: PurposeConfig | None) -> RouteOverride:
    """Read the submitted ``model``, ``fallbacks`` and ``options`` fields into an override.

    A field equal to what datasette.yaml says (or left empty) sets nothing.

    Raises:
        FormError: A field cannot be read.
    """
    model_written, fallbacks_written, options_written = written_values(written)
    model = form.get("model", "").strip() or None
    if model == model_written:
        model = None
    fallbacks = _fallbacks(form.get("fallbacks", ""))
    if fallbacks == fallbacks_written:
        fallbacks = None
    options: Mapping[str, object] | None = _options(form.get("options", ""))
    if options == options_written or options == _shown(options_written):
        options = None  # as written, or as shown (a value from $env/$file is not in the form)
    return RouteOverride(
        model=model,
        fallbacks=fallbacks,
        options=None if options is None else MappingProxyType(dict(options)),
    )


# What the page shows of the overrides, and the check an override passes.

LayerSource: TypeAlias = Literal["datasette.yaml", "override", "not set"]
"""Where a value in effect comes from."""


@dataclass(frozen=True, slots=True)
class Layer:
    """One value of a purpose's routing and the layer it comes from.

    Attributes:
        setting: ``"model"``, ``"fallbacks"`` or ``"options"``.
        value: The value in effect, as text (empty when not set).
        source: ``"override"``, ``"datasette.yaml"`` or ``"not set"``.
        updated_by: For an override, the actor who set it.
        updated_at: For an override, when.
    """

    setting: str
    value: str
    source: LayerSource
    updated_by: str | None = None
    updated_at: str | None = None


@dataclass(frozen=True, slots=True)
class PurposeEdit:
    """One purpose's override, the layers of its values, and its form.

    Attributes:
        name: The purpose name.
        action: The path the form posts to.
        version: The version the form's write is based on.
        locked: Whether datasette.yaml locks it (``locked: true``): no form then.
        choices: The model ids its model may be set to.
        model: The selected model id (empty: as datasette.yaml says).
        written_model: Its model in datasette.yaml, if any.
        fallbacks: The fallbacks field's text.
        options: The options field's text.
        was: Each field's text as the version the form is based on has it: the form sends
            them back (hidden), so that a write changes only the fields its editor changed.
        layers: The model, fallbacks and options in effect, each with its layer.
        stored: Its stored override, if it has one.
        ignored: Why its stored override is not in effect, if it is not.
    """

    name: str
    action: str
    version: int
    locked: bool
    choices: tuple[str, ...]
    model: str
    written_model: str | None
    fallbacks: str
    options: str
    was: Mapping[str, str]
    layers: tuple[Layer, ...]
    stored: StoredOverride | None
    ignored: str | None


@dataclass(frozen=True, slots=True)
class RoutingEdits:
    """The overrides section of the routing page.

    Attributes:
        purposes: Each purpose's override and form.
        audit: The latest writes, newest first.
        can_manage: Whether the actor may change the routing (else no forms are shown).
    """

    purposes: tuple[PurposeEdit, ...]
    audit: tuple[AuditEntry, ...]
    can_manage: bool

    def to_json(self) -> dict[str, object]:
        """The layers of each purpose's values and the latest writes, for ``/-/llm.json``."""
        return {
            "purposes": {
                edit.name: {
                    "version": edit.version,
                    "locked": edit.locked,
                    "ignored": edit.ignored,
                    "layers": [
                        {
                            "setting": layer.setting,
                            "value": layer.value,
                            "source": layer.source,
                            "updated_by": layer.updated_by,
                            "updated_at": layer.updated_at,
                        }
                        for layer in edit.layers
                    ],
                }
                for edit in self.purposes
            },
            "audit": [
                {
                    "purpose": entry.purpose,
                    "version": entry.version,
                    "actor_id": entry.actor_id,
                    "at": entry.at,
                    "before": entry.before.to_json(),
                    "after": entry.after.to_json(),
                }
                for entry in self.audit
            ],
        }


def edit_path(name: str) -> str:
    """Return the path (below Datasette's base URL) the form of purpose ``name`` posts to."""
    return f"/-/llm/purposes/{quote(name, safe='')}"


async def allowed_choices(
    datasette: Datasette, base: LLMConfig, name: str, registry: ModelRegistry
) -> Screening:
    """Screen every installed model for purpose ``name`` under datasette.yaml's configuration."""
    return await screen(
        datasette,
        policy_for(datasette, base, name, registry),
        registry.models,
        None,
        require_keys=base.require_keys,
        requires=requirements_for(datasette, name),
    )


def _not_installed(model_id: str, registry: ModelRegistry) -> str:
    suggestion = nearest(model_id, registry.by_name)
    hint = f" Did you mean {suggestion!r}?" if suggestion else ""
    return f"the model {quoted(model_id)} is not installed.{hint}"


async def check_override(
    datasette: Datasette,
    layers: Overlaid,
    name: str,
    override: RouteOverride,
    registry: ModelRegistry,
) -> str | None:
    """Return why ``override`` may not be stored for purpose ``name``, or ``None``.

    It may not when the purpose is locked; when a model it names is not installed, or is one the
    policy refuses the purpose (blocked, outside the allowlist, lacking what the purpose
    requires, without a key, removed by an ``llm_filter_models`` hook); when its options do not
    suit the model; or when the configuration with it laid over would not parse.
    """
    base = layers.base
    written = base.purpose(name)
    if written is not None and written.locked:
        return LOCKED
    named = [override.model, *(override.fallbacks or ())]
    models = []
    for model_id in dict.fromkeys(model_id for model_id in named if model_id is not None):
        model = registry.by_name.get(model_id)
        if model is None:
            return _not_installed(model_id, registry)
        models.append(model)
    screening = await allowed_choices(datasette, base, name, registry) if models else None
    for model in models:
        refusal = None if screening is None else screening.refused.get(model.model_id)
        if refusal is not None:
            return (
                f"the model {quoted(model.model_id)} may not serve purpose {name!r}: "
                f"{refusal.reason}"
            )
    model_written, _, options_written = written_values(written)
    options = options_written if override.options is None else override.options
    routed = override.model or model_written
    if override.options and routed is None:
        return (
            "options belong to the purpose's model: choose a model for it too (or set "
            "purposes.<name>.model in datasette.yaml)."
        )
    routed_model = None if routed is None else registry.by_name.get(routed)
    if options and routed_model is not None:
        problems = option_problems(routed_model, options)
        if problems:
            return "options: " + " ".join(problem.message for problem in problems)
    others = {other: stored.override for other, stored in layers.applied.items() if other != name}
    try:
        parse_config(overlay_section(raw_section(datasette)[2], {**others, name: override}))
    except ConfigurationError as error:
        return f"the configuration with this override would not be valid: {error}"
    return None


def _layers(layers: Overlaid, name: str, stored: StoredOverride | None) -> tuple[Layer, ...]:
    model_written, fallbacks_written, options_written = written_values(layers.base.purpose(name))
    applied = stored.override if stored is not None and name in layers.applied else None
    by = None if stored is None else stored.updated_by
    at = None if stored is None else stored.updated_at

    def layer(setting: str, overridden: bool, written: bool, value: str) -> Layer:
        if overridden:
            return Layer(setting, value, "override", by or "an anonymous actor", at)
        return Layer(setting, value, "datasette.yaml" if written else "not set")

    fallbacks = applied.fallbacks if applied and applied.fallbacks is not None else None
    options = applied.options if applied and applied.options is not None else None
    model = applied.model if applied and applied.model is not None else None
    return (
        layer("model", model is not None, model_written is not None, model or model_written or ""),
        layer(
            "fallbacks",
            fallbacks is not None,
            fallbacks_written is not None,
            _listed(fallbacks if fallbacks is not None else fallbacks_written),
        ),
        layer(
            "options",
            options is not None,
            bool(options_written),
            options_text(options if options is not None else options_written),
        ),
    )


def _listed(fallbacks: tuple[str, ...] | None) -> str:
    if fallbacks is None:
        return ""
    return ", ".join(fallbacks) or "none"


async def purpose_edit(
    datasette: Datasette,
    layers: Overlaid,
    name: str,
    registry: ModelRegistry,
    *,
    form: Mapping[str, str] | None = None,
    version: int | None = None,
    was: Mapping[str, str] | None = None,
) -> PurposeEdit:
    """Return what the page shows of purpose ``name``: its form filled as stored, or as ``form``.

    Args:
        form: Submitted fields to fill the form with (a refused or conflicting write).
        version: The version to base the form on, instead of the current one.
        was: The fields' texts at that version (the form's baseline); by default, those
            ``form`` was loaded with, else the current ones.
    """
    overrides = await load_overrides(datasette)
    stored = overrides.get(name)
    written = layers.base.purpose(name)
    model_written = written_values(written)[0]
    applied = stored.override if stored is not None and name in layers.applied else None
    shown = field_texts(applied, written)
    try:
        # Bounded as routing is on the page: a hook that hangs or fails leaves no choices.
        screening: Screening | None = await asyncio.wait_for(
            allowed_choices(datasette, layers.base, name, registry), ROUTE_TIMEOUT_SECONDS
        )
    except Exception:  # asyncio.TimeoutError included
        screening = None
    fields = shown if form is None else {field: form.get(field, "") for field in FIELDS}
    if was is None:
        # A refused write keeps the baseline its form was loaded with.
        was = shown if form is None else {f: form.get(f"was_{f}", shown[f]) for f in FIELDS}
    return PurposeEdit(
        name=name,
        action=datasette.urls.path(edit_path(name)),
        version=version_of(overrides, name) if version is None else version,
        locked=written is not None and written.locked,
        choices=() if screening is None else tuple(m.model_id for m in screening.models),
        model=fields["model"],
        written_model=model_written,
        fallbacks=fields["fallbacks"],
        options=fields["options"],
        was=MappingProxyType(dict(was)),
        layers=_layers(layers, name, stored),
        stored=stored,
        ignored=layers.ignored.get(name),
    )


async def build_edits(
    datasette: Datasette, names: Sequence[str], *, can_manage: bool
) -> RoutingEdits:
    """Return the overrides section of the routing page for purposes ``names``.

    Raises:
        ConfigurationError: datasette.yaml's configuration is malformed.
    """
    await load_overrides(datasette)
    layers = layers_for(datasette)
    registry = current_registry(datasette)
    purposes = [await purpose_edit(datasette, layers, name, registry) for name in names]
    return RoutingEdits(tuple(purposes), tuple(await audit_entries(datasette)), can_manage)


# The POST that stores an override.

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
        datasette, layers, name, current_registry(datasette), form=form, version=version
    )
    context: dict[str, object] = {"name": name, "error": error, "edit": edit}
    return await _page(datasette, request, 400, context)


async def _conflict(
    datasette: Datasette,
    request: Request,
    name: str,
    form: Mapping[str, str],
    changed: frozenset[str],
    based_on: int,
) -> Response:
    """The 409 page of a write based on a version that is not the current one (behind: another
    editor wrote since; ahead: the store lost writes): what changed since, and the form at the
    current version with only the fields this editor changed set to theirs, so that sending it
    again applies just those over the new version."""
    overrides = await load_overrides(datasette)
    stored = overrides.get(name)
    current = version_of(overrides, name)
    conflict = OverrideConflict(
        name,
        based_on,
        stored or StoredOverride(name, RouteOverride(), 0, None, ""),
    )
    layers = layers_for(datasette)
    applied = stored.override if stored is not None and name in layers.applied else None
    now = field_texts(applied, layers.base.purpose(name))
    retry = {**form, **{f: form.get(f, "") if f in changed else now[f] for f in FIELDS}}
    changes = [entry for entry in await audit_entries(datasette, name) if entry.version > based_on]
    edit = await purpose_edit(
        datasette, layers, name, current_registry(datasette), form=retry, version=current, was=now
    )
    context: dict[str, object] = {
        "name": name,
        "error": str(conflict),
        "conflict": conflict,
        "changes": list(reversed(changes)),
        "edit": edit,
        "changed": sorted(changed),
    }
    return await _page(datasette, request, 409, context)


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
    stored = overrides.get(name)
    current = RouteOverride() if stored is None else stored.override
    changed = changed_fields(form)
    try:
        override = (
            RouteOverride()
            if form.get("action") == "revert"
            else patched(current, override_from_form(form, written), changed)
        )
    except FormError as error:
        return await _refused(datasette, request, layers, name, form, version, str(error))
    if version != version_of(overrides, name):
        return await _conflict(datasette, request, name, form, changed, version)
    if not override.empty:
        reason = await check_override(
            datasette, layers, name, override, current_registry(datasette)
        )
        if reason is not None:
            return await _refused(datasette, request, layers, name, form, version, reason)
    if override == current:
        datasette.add_message(request, f"Routing of purpose {name!r}: nothing changed.")
        return Response.redirect(datasette.urls.path("/-/llm") + "#overrides")
    try:
        saved = await save_override(
            datasette, name, override, based_on=version, actor_id=actor_id(request.actor)
        )
    except OverrideConflict:
        return await _conflict(datasette, request, name, form, changed, version)
    await announce_override(datasette, saved)  # with Redis: every process reads it now
    what = "reverted to datasette.yaml" if override.empty else "saved"
    datasette.add_message(request, f"Routing of purpose {name!r} {what} (version {saved.version}).")
    return Response.redirect(datasette.urls.path("/-/llm") + "#overrides")
