"""What the routing page shows of the overrides, and the check an override passes to be stored.

The models a purpose's form offers, and the models an override may name, are the installed
models that ``datasette_llm.policy.screen`` admits for the purpose under datasette.yaml's
configuration, as a call with no actor would be screened (keys are looked at, never read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias
from urllib.parse import quote

from ..capabilities import NOTHING_REQUIRED
from ..config import LLMConfig
from ..config_parser import parse_config
from ..config_source import layers_for, raw_section
from ..errors import ConfigurationError, nearest, quoted
from ..models import ModelRegistry, current_registry
from ..overlay import LOCKED, Overlaid, overlay_section
from ..overrides import (
    AuditEntry,
    RouteOverride,
    StoredOverride,
    audit_entries,
    load_overrides,
    version_of,
)
from ..policy import Screening, policy_for, screen
from ..purpose_catalog import get_purpose
from .edit_form import fallbacks_text, options_text, written_values
from .report import ROUTE_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = [
    "Layer",
    "LayerSource",
    "PurposeEdit",
    "RoutingEdits",
    "allowed_choices",
    "build_edits",
    "check_override",
    "edit_path",
    "purpose_edit",
]

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
    declared = get_purpose(datasette, name)
    return await screen(
        datasette,
        policy_for(base, name, registry),
        registry.models,
        None,
        require_keys=base.require_keys,
        requires=NOTHING_REQUIRED if declared is None else declared.requires,
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
        reason = None if screening is None else screening.refused.get(model.model_id)
        if reason is not None:
            return f"the model {quoted(model.model_id)} may not serve purpose {name!r}: {reason}"
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
        try:
            routed_model.Options(**options)
        except Exception as error:  # pydantic's ValidationError, or a plugin's own
            return f"the options do not suit the model {quoted(routed_model.model_id)}: {error}"
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
) -> PurposeEdit:
    """Return what the page shows of purpose ``name``: its form filled as stored, or as ``form``.

    Args:
        form: Submitted fields to fill the form with (a refused or conflicting write).
        version: The version to base the form on, instead of the current one.
    """
    overrides = await load_overrides(datasette)
    stored = overrides.get(name)
    written = layers.base.purpose(name)
    model_written, fallbacks_written, options_written = written_values(written)
    applied = stored.override if stored is not None and name in layers.applied else None
    try:
        # Bounded as routing is on the page: a hook that hangs or fails leaves no choices.
        screening: Screening | None = await asyncio.wait_for(
            allowed_choices(datasette, layers.base, name, registry), ROUTE_TIMEOUT_SECONDS
        )
    except Exception:  # asyncio.TimeoutError included
        screening = None
    if form is not None:
        model = form.get("model", "")
        fallbacks = form.get("fallbacks", "")
        options = form.get("options", "")
    else:
        model = (applied.model if applied else None) or ""
        fallbacks = fallbacks_text(
            applied.fallbacks if applied and applied.fallbacks is not None else fallbacks_written
        )
        options = options_text(
            applied.options if applied and applied.options is not None else options_written
        )
    return PurposeEdit(
        name=name,
        action=datasette.urls.path(edit_path(name)),
        version=version_of(overrides, name) if version is None else version,
        locked=written is not None and written.locked,
        choices=() if screening is None else tuple(m.model_id for m in screening.models),
        model=model,
        written_model=model_written,
        fallbacks=fallbacks,
        options=options,
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
    registry = current_registry()
    purposes = [await purpose_edit(datasette, layers, name, registry) for name in names]
    return RoutingEdits(tuple(purposes), tuple(await audit_entries(datasette)), can_manage)
