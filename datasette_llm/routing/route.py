"""Routing: choose the model that serves a call, asking the policy about every candidate.

Candidates, first admitted wins:

1. ``explicit``: a ``model_id`` the caller passed: refused if blocked (``ModelBlockedError``),
   not checked against allowlists (0.1a8 compatibility) or ``llm_filter_models``;
2. ``hook``: the first ``llm_default_model`` implementation that answers;
3. ``purpose_config``: ``purposes.<name>.model``;
4. ``purpose_default``: the purpose's ``Purpose.default_model``, a recommendation: skipped if it
   is not installed or has no key;
5. ``default_model``: the configured global default.

Every other candidate must pass the whole policy (``datasette_llm.routing.policy``) for the
purpose and actor, so the model routing picks is the first that ``LLM.models()`` offers.

The purpose's ``fallbacks`` are planned (``Resolution.fallbacks``) but each is admitted
(``admit``) only when a prompt needs it, through the same policy, its key required.
``Resolution`` says which model serves a call, which step of routing chose it, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from ..config.values import CONFIG_ROOT
from ..errors import ModelBlockedError, ModelNotFoundError, quoted
from .catalog import get_purpose
from .hooks import call_llm_default_model
from .keys import KeyStatus, key_status, key_value
from .models import (
    ModelRegistry,
    current_registry,
    find_model,
    lookup_model,
)
from .policy import (
    Policy,
    Reference,
    policy_for,
    screen,
)
from .purposes import Purpose
from .requirements import NOTHING_REQUIRED, Requirements, combined

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..actors import Actor
    from ..config.values import LLMConfig

__all__ = ["Resolution", "ResolutionStep", "Routed", "admit", "requirements_for", "route"]


# The resolution.

ResolutionStep: TypeAlias = Literal[
    "explicit", "hook", "purpose_config", "purpose_default", "default_model", "fallback"
]
"""Which step of routing chose a model (see ``Resolution.step``)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of routing one call. It never holds an API key.

    Attributes:
        model_id: The model that serves the call.
        purpose: The purpose name, or ``None``.
        step: Which step chose the model: ``"explicit"`` (a ``model_id`` was passed),
            ``"hook"`` (an ``llm_default_model`` implementation), ``"purpose_config"``
            (``purposes.<name>.model``), ``"purpose_default"`` (``Purpose.default_model``) or
            ``"default_model"`` (the configured global default); ``"fallback"`` for a model a
            prompt fell back to.
        key: Where the model's API key comes from (a secret name at most, never the key).
        chosen_by: For ``"hook"``, the plugin whose hook chose the model.
        skipped: Candidates that were considered and refused, each with the reason.
        fallbacks: The models a prompt falls back to, in order, when this one fails (each is
            checked against the policy again before it is tried).
    """

    model_id: str
    purpose: str | None
    step: ResolutionStep
    key: KeyStatus
    chosen_by: str | None = None
    skipped: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()


# Routing.


@dataclass(frozen=True, slots=True)
class Routed:
    """The model routing chose, with what a prompt to it needs.

    Attributes:
        resolution: How it was chosen (never holds the key).
        model: The llm model.
        key: The API key to send, or ``None`` (llm then looks for one itself).
        reference: Its configured keys, options and limits for this purpose.
        policy: The policy it was admitted under, which its fallbacks are admitted under too.
        requires: What the call requires of a model.
    """

    resolution: Resolution
    model: AsyncModel
    key: str | None
    reference: Reference
    policy: Policy
    requires: Requirements = NOTHING_REQUIRED

    def __repr__(self) -> str:
        return f"Routed({self.resolution!r})"


_Step: TypeAlias = tuple[ResolutionStep, "str | None", tuple[str, ...]]
"""Which step chose a model, the plugin whose hook did, and the candidates skipped first."""


@dataclass(frozen=True, slots=True)
class _Candidate:
    name: str
    step: ResolutionStep
    source: str
    chosen_by: str | None = None

    @property
    def is_recommendation(self) -> bool:
        return self.step == "purpose_default"

    def skipped(self, reason: str) -> str:
        verb = "recommends" if self.is_recommendation else "chose"
        return f"{self.source} {verb} {quoted(self.name)}, skipped because {reason}"


async def _candidates(
    datasette: Datasette,
    config: LLMConfig,
    purpose: Purpose | None,
    name: str | None,
    actor: Actor | None,
) -> list[_Candidate]:
    found: list[_Candidate] = []
    hooked = await call_llm_default_model(datasette, name, actor)
    if hooked is not None:
        model_id, plugin_name = hooked
        source = f"llm_default_model in plugin {plugin_name!r}"
        found.append(_Candidate(model_id, "hook", source, plugin_name))
    purpose_config = config.purpose(name)
    if purpose_config is not None and purpose_config.model is not None:
        found.append(
            _Candidate(purpose_config.model.model_id, "purpose_config", f"purposes.{name}.model")
        )
    if purpose is not None and purpose.default_model is not None:
        source = f"Purpose({name!r}).default_model"
        found.append(_Candidate(purpose.default_model, "purpose_default", source))
    if config.default_model is not None:
        found.append(_Candidate(config.default_model.model_id, "default_model", "default_model"))
    return found


async def _chosen(
    datasette: Datasette,
    policy: Policy,
    model: AsyncModel,
    resolution: _Step,
    actor: Actor | None,
    read_key: bool,
    requires: Requirements,
) -> Routed:
    step, chosen_by, skipped = resolution
    reference = policy.reference(model.model_id)
    if read_key:
        key, status = await key_value(datasette, reference.keys, model, actor)
    else:
        key, status = None, await key_status(datasette, reference.keys, model)
    fallbacks = tuple(model_id for model_id in policy.fallbacks if model_id != model.model_id)
    if step == "fallback":
        fallbacks = ()
    return Routed(
        Resolution(model.model_id, policy.purpose, step, status, chosen_by, skipped, fallbacks),
        model,
        key,
        reference,
        policy,
        requires,
    )


def _declared(datasette: Datasette, purpose: str | Purpose | None) -> Purpose | None:
    """The ``Purpose`` of a call: the one given, else the one registered under the name."""
    if purpose is None or isinstance(purpose, Purpose):
        return purpose
    return get_purpose(datasette, purpose)


def requirements_for(
    datasette: Datasette, purpose: str | Purpose | None, requires: Requirements | None = None
) -> Requirements:
    """Return what a call for ``purpose`` requires of a model: the purpose's and its own.

    A purpose given by name requires what its registered ``Purpose`` requires, so a ``Purpose``
    and its name route, list and fall back alike. Routing (the routed candidates, and the
    fallbacks of an explicit ``model_id`` too), ``LLM.models()``, the routing page and the
    routing form all ask here.

    Args:
        requires: What the call itself requires (``model(requires=...)``), if anything.
    """
    declared = _declared(datasette, purpose)
    return combined(None if declared is None else declared.requires, requires)


async def admit(
    datasette: Datasette, primary: Routed, model_id: str, actor: Actor | None
) -> Routed | str:
    """Admit fallback ``model_id`` for a prompt routed to ``primary``, or say why not.

    It passes the whole policy, as any routed model does, with its API key required: a model
    that is blocked, not allowed, lacking a requirement, keyless or filtered out is never
    contacted.
    """
    policy = primary.policy
    model = find_model(model_id, policy.registry)
    if model is None:
        return "it is not installed"
    screening = await screen(
        datasette, policy, [model], actor, require_keys=True, requires=primary.requires
    )
    if not screening.models:
        return screening.refused[model.model_id].reason
    fallback: _Step = ("fallback", None, ())
    return await _chosen(datasette, policy, model, fallback, actor, True, primary.requires)


async def route(
    datasette: Datasette,
    config: LLMConfig,
    model_id: str | None,
    purpose: str | Purpose | None,
    actor: Actor | None,
    *,
    read_key: bool,
    registry: ModelRegistry | None = None,
    requires: Requirements | None = None,
) -> Routed:
    """Choose the model for a call.

    Args:
        read_key: Read the chosen model's API key (a use of a stored secret). Without it,
            ``Routed.key`` is ``None`` and the resolution only says where the key would come from.
        requires: What the call requires of a model, besides what the purpose requires.

    Raises:
        ModelBlockedError: The explicit ``model_id`` is blocked.
        ModelNotFoundError: No candidate was given or configured, or every one was refused;
            the message lists each candidate and why.
        llm.UnknownModelError: The explicit or configured model is not installed.
    """
    registry = registry or current_registry(datasette)
    name = purpose.name if isinstance(purpose, Purpose) else purpose
    policy = policy_for(datasette, config, name, registry)
    if model_id is not None:
        # A blocked name is refused as blocked, installed or not.
        setting = policy.blocked.get(model_id)
        if setting is not None and find_model(model_id, registry) is None:
            raise ModelBlockedError(model_id, name, f"{CONFIG_ROOT}.{setting}")
        model = lookup_model(model_id, registry)
        setting = policy.blocked.get(model.model_id)
        if setting is not None:
            raise ModelBlockedError(model.model_id, name, f"{CONFIG_ROOT}.{setting}")
        # Not checked against requirements itself, but its fallbacks are, as for any route.
        needs = requirements_for(datasette, purpose, requires)
        explicit: _Step = ("explicit", None, ())
        return await _chosen(datasette, policy, model, explicit, actor, read_key, needs)

    declared = _declared(datasette, purpose)
    needs = requirements_for(datasette, declared or name, requires)
    candidates = await _candidates(datasette, config, declared, name, actor)
    skipped: list[str] = []
    for candidate in candidates:
        found = find_model(candidate.name, registry)
        if found is None and candidate.is_recommendation:
            skipped.append(candidate.skipped("it is not installed"))
            continue
        # Raises llm's UnknownModelError for a model the operator or a hook named.
        model = found or lookup_model(candidate.name, registry)
        require_keys = config.require_keys or candidate.is_recommendation
        screening = await screen(
            datasette, policy, [model], actor, require_keys=require_keys, requires=needs
        )
        if screening.models:
            step = (candidate.step, candidate.chosen_by, tuple(skipped))
            return await _chosen(datasette, policy, model, step, actor, read_key, needs)
        skipped.append(candidate.skipped(screening.refused[model.model_id].reason))
    raise ModelNotFoundError(_nothing_routed(name, candidates, skipped))


def _nothing_routed(name: str | None, candidates: list[_Candidate], skipped: list[str]) -> str:
    for_purpose = f" for purpose {name!r}" if name is not None else ""
    fix = (
        f"set plugins.datasette-llm.purposes.{name}.model or plugins.datasette-llm.default_model"
        if name is not None
        else "set plugins.datasette-llm.default_model"
    )
    if not candidates:
        return (
            f"No model_id provided and no default_model configured{for_purpose}: no "
            "llm_default_model hook answered and nothing is configured. "
            f"Pass model_id=, or {fix} in datasette.yaml."
        )
    details = "".join(f"\n  - {line}" for line in skipped)
    return (
        f"No model could be routed{for_purpose}: every candidate was refused.{details}\n"
        f"Pass model_id=, unblock or allow one of them, or {fix} to a model that may serve it."
    )
