"""Resolution: which model serves a call, and which step of the routing chose it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .catalog import get_purpose
from .errors import ModelNotFoundError
from .hooks import call_llm_default_model
from .keys import KeyStatus, find_key
from .purposes import Purpose
from .registry import canonical_ids, current_registry, has_model_override, lookup_model

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from .config import LLMConfig
    from .types import Actor, ResolutionStep

__all__ = ["Resolution", "resolve"]

logger = logging.getLogger("datasette_llm")


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of routing one call. It never holds an API key.

    Attributes:
        model_id: The model that serves the call.
        purpose: The purpose name, or ``None``.
        step: Which step chose the model: ``"explicit"`` (a ``model_id`` was passed),
            ``"hook"`` (an ``llm_default_model`` implementation), ``"purpose_config"``
            (``purposes.<name>.model``), ``"purpose_default"`` (``Purpose.default_model``) or
            ``"default_model"`` (the configured global default).
        key: Where the model's API key comes from (a secret name at most, never the key).
        chosen_by: For ``"hook"``, the plugin whose hook chose the model.
        skipped: Candidates that were considered and refused, each with the reason.
    """

    model_id: str
    purpose: str | None
    step: ResolutionStep
    key: KeyStatus
    chosen_by: str | None = None
    skipped: tuple[str, ...] = ()


def _blocked_reason(config: LLMConfig, model_id: str, purpose: str | None) -> str | None:
    purpose_config = config.purpose(purpose)
    purpose_blocked = purpose_config.blocked_models if purpose_config is not None else frozenset()
    if not config.blocked_models and not purpose_blocked:
        return None
    # Compare through llm's aliases both ways: an alias of a blocked model is blocked, and so
    # is a model whose alias is in a blocklist.
    ids = canonical_ids(frozenset((model_id,)))
    if ids & canonical_ids(config.blocked_models):
        return "it is in blocked_models"
    if ids & canonical_ids(purpose_blocked):
        return f"it is in purposes.{purpose}.blocked_models"
    return None


def _installed(model_id: str) -> AsyncModel | None:
    if has_model_override():
        # A test double is active: it decides which models exist (and they need no key).
        try:
            return lookup_model(model_id)
        except KeyError:
            return None
    return current_registry().by_name.get(model_id)


async def resolve(
    datasette: Datasette,
    config: LLMConfig,
    model_id: str | None,
    purpose: str | Purpose | None,
    actor: Actor | None,
) -> tuple[Resolution, AsyncModel, str | None]:
    """Choose the model for a call; return ``(resolution, model, key)``.

    Steps, first answer wins: explicit ``model_id``; ``llm_default_model`` hooks;
    ``purposes.<name>.model``; ``Purpose.default_model`` if installed, allowed and keyed;
    ``default_model``. A blocked model is skipped at every step but the explicit one.

    Raises:
        ModelNotFoundError: No step produced a usable model; the message lists what was tried.
        llm.UnknownModelError: The chosen model is not installed.
    """
    name = purpose.name if isinstance(purpose, Purpose) else purpose
    if model_id is not None:
        model = lookup_model(model_id)
        key, status = await find_key(datasette, config, model, name, actor)
        return Resolution(model.model_id, name, "explicit", status), model, key

    skipped: list[str] = []
    tried: list[str] = []

    def refuse(candidate: str, source: str) -> bool:
        reason = _blocked_reason(config, candidate, name)
        if reason is None:
            return False
        skipped.append(f"{source} chose {candidate!r}, skipped because {reason}")
        return True

    async def chosen(
        candidate: str, step: ResolutionStep, chosen_by: str | None = None
    ) -> tuple[Resolution, AsyncModel, str | None]:
        model = lookup_model(candidate)
        key, status = await find_key(datasette, config, model, name, actor)
        resolution = Resolution(model.model_id, name, step, status, chosen_by, tuple(skipped))
        return resolution, model, key

    hooked = await call_llm_default_model(datasette, name, actor)
    tried.append("llm_default_model hooks")
    if hooked is not None:
        candidate, plugin_name = hooked
        if not refuse(candidate, f"llm_default_model in plugin {plugin_name!r}"):
            return await chosen(candidate, "hook", plugin_name)

    purpose_config = config.purpose(name)
    if name is not None:
        tried.append(f"purposes.{name}.model")
    if purpose_config is not None and purpose_config.model is not None:
        candidate = purpose_config.model.model_id
        if not refuse(candidate, f"purposes.{name}.model"):
            return await chosen(candidate, "purpose_config")

    declared = purpose if isinstance(purpose, Purpose) else None
    if declared is None and name is not None:
        declared = get_purpose(datasette, name)
    if declared is not None:
        tried.append(f"Purpose({name!r}).default_model")
    if declared is not None and declared.default_model is not None:
        candidate = declared.default_model
        source = f"Purpose({name!r}).default_model"
        allowlist = config.allowlist(name)
        installed = _installed(candidate)
        if installed is None:
            skipped.append(f"{source} is {candidate!r}, which is not installed")
        elif allowlist is not None and installed.model_id not in canonical_ids(allowlist):
            skipped.append(
                f"{source} is {candidate!r}, which is not in the allowlist for this purpose"
            )
        elif not refuse(candidate, source):
            key, status = await find_key(datasette, config, installed, name, actor)
            if status.available:
                resolution = Resolution(
                    installed.model_id, name, "purpose_default", status, None, tuple(skipped)
                )
                return resolution, installed, key
            skipped.append(
                f"{source} is {candidate!r}, which has no API key "
                f"(set the secret {status.secret_name})"
            )

    tried.append("default_model")
    if config.default_model is not None:
        candidate = config.default_model.model_id
        if not refuse(candidate, "default_model"):
            return await chosen(candidate, "default_model")

    details = "".join(f"\n  - {line}" for line in skipped)
    for_purpose = f" for purpose {name!r}" if name is not None else ""
    fix = (
        f"set plugins.datasette-llm.purposes.{name}.model"
        if name is not None
        else "set plugins.datasette-llm.default_model"
    )
    raise ModelNotFoundError(
        f"No model_id provided and no default_model configured{for_purpose}. "
        f"Tried: {', '.join(tried)}.{details}\n"
        f"Pass model_id=, or {fix} (or plugins.datasette-llm.default_model) in datasette.yaml."
    )
