"""Laying routing overrides over the configuration written in datasette.yaml.

An override is written into a copy of the raw ``plugins: datasette-llm:`` section, which is then
parsed exactly as datasette.yaml is: the result is checked as strictly and is as frozen. An
override never widens what datasette.yaml allows: one on a purpose with ``locked: true``, or
naming a model that datasette.yaml's policy for the purpose refuses (blocked, or outside its
allowlist), is left out, and so is one that no longer parses. The routing page says why.
"""

from __future__ import annotations

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
from .models import current_registry
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
            purpose["fallbacks"] = list(override.fallbacks)
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
    return Overlaid(base, config, MappingProxyType(usable), MappingProxyType(ignored))


def _parsed(section: object, overrides: Mapping[str, StoredOverride]) -> LLMConfig:
    raw = overlay_section(section, {name: stored.override for name, stored in overrides.items()})
    return parse_config(raw)


# The written configuration and the overrides that were laid, and the result.
_OVERLAID: Final[Slot[tuple[LLMConfig, Mapping[str, StoredOverride], Overlaid]]] = Slot(
    "the configuration in effect"
)


def layers_for(datasette: Datasette) -> Overlaid:
    """Return the written configuration, the routing overrides over it, and the result.

    Laid again only when the written configuration or the overrides change (each is replaced,
    never changed, so this compares identities).

    Raises:
        ConfigurationError: The written configuration is malformed.
    """
    base = written_config_for(datasette)
    overrides = overrides_of(datasette)
    state = state_of(datasette)
    cached = state.get(_OVERLAID)
    if cached is not None and cached[0] is base and cached[1] is overrides:
        return cached[2]
    if overrides:
        registry = current_registry(datasette)
        layers = overlay(raw_section(datasette)[2], base, overrides, registry)
    else:
        layers = Overlaid(base, base)
    return state.put(_OVERLAID, (base, overrides, layers))[2]


def config_for(datasette: Datasette) -> LLMConfig:
    """Return the configuration of ``datasette`` that routing uses.

    That is the configuration as written (see ``written_config_for``) with the routing
    overrides set on ``/-/llm`` laid over it; a stored override is in effect from the next call.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    return layers_for(datasette).config
