"""Laying routing overrides over the configuration written in datasette.yaml.

An override is written into a copy of the raw ``plugins: datasette-llm:`` section, which is then
parsed exactly as datasette.yaml is: the result is checked as strictly and is as frozen. An
override never widens what datasette.yaml allows: one on a purpose with ``locked: true``, or
naming a model that datasette.yaml's policy for the purpose refuses (blocked, or outside its
allowlist), is left out, and so is one that no longer parses, names a model no longer
installed, or whose options the purpose's model does not take (the one check of options:
``routing.models.option_problems``). Calls then route by datasette.yaml; the routing page, its
JSON and ``datasette llm check`` say why.

An override is a field-level patch: a fallback it lists keeps datasette.yaml's reference for
that model (its ``key``, ``options``, limits), and a model's limits hold wherever datasette.yaml
gives them, even where an override routed a purpose away from that reference
(``LLMConfig.carried_limits``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from ..config.overrides import RouteOverride, StoredOverride, overrides_of
from ..config.parser import parse_config, reference
from ..config.source import raw_section, written_config_for
from ..config.values import LLMConfig
from ..errors import ConfigurationError, quoted
from ..state import Slot, state_of
from .models import current_registry, find_model, option_problems
from .policy import Policy

if TYPE_CHECKING:
    from datasette.app import Datasette

    from .models import ModelRegistry

__all__ = [
    "LOCKED",
    "Overlaid",
    "config_for",
    "layers_for",
    "overlay",
    "overlay_section",
    "refusal_of",
]

LOCKED: Final = (
    "the purpose is locked in datasette.yaml (locked: true): only datasette.yaml sets it"
)


@dataclass(frozen=True, slots=True)
class Overlaid:
    """The configuration with the overrides laid over it.

    Attributes:
        base: The configuration as datasette.yaml has it.
        config: The configuration routing uses: ``base`` with the applied overrides.
        applied: The overrides in effect, by purpose.
        ignored: Why each override that is stored but not in effect is left out, by purpose.
    """

    base: LLMConfig
    config: LLMConfig
    applied: Mapping[str, StoredOverride] = field(default_factory=lambda: MappingProxyType({}))
    ignored: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _model_ref(written: object, override: RouteOverride) -> object:
    """The purpose's ``model`` reference with the override's model and options written in."""
    if isinstance(written, Mapping) and reference(written) is None:
        ref: dict[object, object] = dict(written)
    else:
        ref = {} if written is None else {"model": written}
    if override.model is not None and ref.get("model") != override.model:
        # A key and limits belong to the model they were written for; options carry over.
        ref = {"model": override.model, **({"options": ref["options"]} if "options" in ref else {})}
    if override.options is not None:
        ref["options"] = dict(override.options)
    return ref


def _fallback_refs(
    fallbacks: tuple[str, ...], purpose: Mapping[object, object], raw: Mapping[object, object]
) -> list[object]:
    """The purpose's fallbacks as the override lists them, each a model reference of
    datasette.yaml's where it has one for that model (its ``key``, ``options``, limits kept):
    the purpose's own fallbacks first, then the global ones."""
    written: dict[object, object] = {}
    for entries in (purpose.get("fallbacks"), raw.get("fallbacks")):
        for entry in entries if isinstance(entries, list) else ():
            model_id = entry.get("model") if isinstance(entry, Mapping) else entry
            if isinstance(model_id, str):
                written.setdefault(model_id, entry)
    return [written.get(model_id, model_id) for model_id in fallbacks]


def overlay_section(section: object, overrides: Mapping[str, RouteOverride]) -> object:
    """Return a copy of the raw section with each purpose's override written in.

    ``section`` itself is left as it is.
    """
    if not overrides:
        return section
    raw: dict[object, object] = dict(section) if isinstance(section, Mapping) else {}
    written = raw.get("purposes")
    purposes: dict[object, object] = dict(written) if isinstance(written, Mapping) else {}
    for name, override in overrides.items():
        if override.empty:
            continue
        value = purposes.get(name)
        purpose: dict[object, object] = dict(value) if isinstance(value, Mapping) else {}
        if override.model is not None or override.options is not None:
            purpose["model"] = _model_ref(purpose.get("model"), override)
        if override.fallbacks is not None:
            purpose["fallbacks"] = _fallback_refs(override.fallbacks, purpose, raw)
        purposes[name] = purpose
    raw["purposes"] = purposes
    return raw


def refusal_of(
    base: LLMConfig, purpose: str, override: RouteOverride, registry: ModelRegistry
) -> str | None:
    """Return why datasette.yaml does not let ``override`` apply to ``purpose``, or ``None``.

    Checks ``locked`` and, through the purpose's ``Policy``, that each model it names is one
    datasette.yaml's configuration allows for the purpose.
    """
    purpose_config = base.purpose(purpose)
    if purpose_config is not None and purpose_config.locked:
        return LOCKED
    policy = Policy(base, purpose, registry)
    for model_id in (override.model, *(override.fallbacks or ())):
        if model_id is None:
            continue
        refusal = policy.refusal(model_id)
        if refusal is not None:
            return (
                f"the model {quoted(model_id)} may not serve purpose {purpose!r}: {refusal.reason}"
            )
    return None


def overlay(
    section: object,
    base: LLMConfig,
    overrides: Mapping[str, StoredOverride],
    registry: ModelRegistry,
) -> Overlaid:
    """Lay ``overrides`` over ``section`` (whose parsed form is ``base``), leaving out bad ones."""
    usable: dict[str, StoredOverride] = {}
    ignored: dict[str, str] = {}
    for name, stored in overrides.items():
        if stored.override.empty:
            continue
        reason = refusal_of(base, name, stored.override, registry)
        if reason is None:
            usable[name] = stored
        else:
            ignored[name] = reason
    if not usable:
        return Overlaid(base, base, MappingProxyType({}), MappingProxyType(ignored))
    try:
        config = _parsed(section, usable)
    except ConfigurationError:
        # One of them no longer parses (datasette.yaml changed under it): keep the others.
        kept: dict[str, StoredOverride] = {}
        for name, stored in usable.items():
            try:
                _parsed(section, {**kept, name: stored})
            except ConfigurationError as error:
                ignored[name] = f"it does not fit datasette.yaml any more: {error}"
            else:
                kept[name] = stored
        usable = kept
        config = _parsed(section, usable) if usable else base
    misfits = {
        name: reason
        for name, stored in usable.items()
        if (reason := _misfit(config, name, stored.override, registry)) is not None
    }
    if misfits:
        # A model it names is gone, or its options no longer suit the purpose's model (the
        # YAML, the installed models or a model's options changed): route by datasette.yaml.
        ignored.update(misfits)
        usable = {name: stored for name, stored in usable.items() if name not in misfits}
        config = _parsed(section, usable) if usable else base
    # Limits belong to the model, wherever datasette.yaml gives them: an override routing a
    # purpose away from the reference that gives them leaves them in force for the others.
    carried = tuple(base.limit_refs())
    config = dataclasses.replace(config, carried_limits=carried) if carried else config
    return Overlaid(base, config, MappingProxyType(usable), MappingProxyType(ignored))


def _misfit(
    config: LLMConfig, name: str, override: RouteOverride, registry: ModelRegistry
) -> str | None:
    """Why ``override``, laid into ``config``, cannot route purpose ``name`` now, or ``None``:
    a model it names is not installed, or the purpose's model does not take its options."""
    for model_id in (override.model, *(override.fallbacks or ())):
        if model_id is not None and find_model(model_id, registry) is None:
            return f"the model {quoted(model_id)} it names is not installed"
    purpose = config.purpose(name)
    ref = None if purpose is None else purpose.model
    model = None if ref is None else find_model(ref.model_id, registry)
    if ref is None or model is None or not ref.options:
        return None
    problems = option_problems(model, ref.options)
    if not problems:
        return None
    return "its options do not suit the model: " + " ".join(p.message for p in problems)


def _parsed(section: object, overrides: Mapping[str, StoredOverride]) -> LLMConfig:
    raw = overlay_section(section, {name: stored.override for name, stored in overrides.items()})
    return parse_config(raw)


# The written configuration, the overrides that were laid, the installed models they were
# checked against, and the result.
_OVERLAID: Final[
    Slot[tuple[LLMConfig, Mapping[str, StoredOverride], ModelRegistry | None, Overlaid]]
] = Slot("the configuration in effect")


def layers_for(datasette: Datasette) -> Overlaid:
    """Return the written configuration, the routing overrides over it, and the result.

    Laid again only when the written configuration, the overrides or the installed models
    change (each is replaced, never changed, so this compares identities): an override that no
    longer fits what it lies over is then ignored, with the reason.

    Raises:
        ConfigurationError: The written configuration is malformed.
    """
    base = written_config_for(datasette)
    overrides = overrides_of(datasette)
    registry = current_registry(datasette) if overrides else None
    state = state_of(datasette)
    cached = state.get(_OVERLAID)
    if (
        cached is not None
        and cached[0] is base
        and cached[1] is overrides
        and cached[2] is registry
    ):
        return cached[3]
    if registry is not None:
        layers = overlay(raw_section(datasette)[2], base, overrides, registry)
    else:
        layers = Overlaid(base, base)
    return state.put(_OVERLAID, (base, overrides, registry, layers))[3]


def config_for(datasette: Datasette) -> LLMConfig:
    """Return the configuration of ``datasette`` that routing uses.

    That is the configuration as written (see ``written_config_for``) with the routing
    overrides set on ``/-/llm`` laid over it; a stored override is in effect from the next call.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    return layers_for(datasette).config
