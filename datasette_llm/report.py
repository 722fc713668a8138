"""The routing report: which model serves each purpose and why, as one frozen typed value.

Built once per request of ``/-/llm`` (and by ``datasette llm purposes``) from the configuration,
the registered purposes, the installed models and a real resolution of every purpose. It holds
secret *names* only, never a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from .config import LLMConfig
from .errors import ConfigProblem, ModelNotFoundError
from .validation import (
    MissingModel,
    UnregisteredPurpose,
    find_missing_models,
    find_unregistered_purposes,
    validate_datasette,
)

if TYPE_CHECKING:
    from datasette.app import Datasette

    from .keys import KeyStatus
    from .purposes import Purpose, PurposeCollision
    from .registry import ModelRegistry
    from .types import ResolutionStep

__all__ = [
    "AllowedModel",
    "KeyState",
    "PurposeRoute",
    "Route",
    "RoutingReport",
    "build_report",
]

KeyState: TypeAlias = Literal["set", "missing", "not_needed"]
"""Whether a model's API key is available: found, not found, or not needed at all."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Whether a model has its API key, and from where. Never the key itself.

    Attributes:
        state: ``"set"``, ``"missing"`` or ``"not_needed"``.
        source: ``"secret"`` (datasette-secrets), ``"llm"`` (llm's key store or environment),
            or ``None`` when there is no key.
        secret_name: The secret holding the key (``"set"``) or that should (``"missing"``).
    """

    state: KeyState
    source: str | None
    secret_name: str | None

    @classmethod
    def from_status(cls, status: KeyStatus) -> KeyInfo:
        """Describe a ``KeyStatus`` for an operator."""
        if status.source == "not_needed":
            return cls("not_needed", None, None)
        if status.source == "missing":
            return cls("missing", None, status.secret_name)
        return cls("set", status.source, status.secret_name)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {"state": self.state, "source": self.source, "secret_name": self.secret_name}


@dataclass(frozen=True, slots=True)
class AllowedModel:
    """A model in an allowlist, as an operator needs to see it.

    Attributes:
        model_id: The id as written in configuration.
        installed: Whether an installed llm plugin provides it.
        blocked: Whether a blocklist removes it again.
        key: Its key state, or ``None`` when it is not installed.
    """

    model_id: str
    installed: bool
    blocked: bool
    key: KeyInfo | None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model_id": self.model_id,
            "installed": self.installed,
            "blocked": self.blocked,
            "key": None if self.key is None else self.key.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes: the resolved model and the step that chose it, or why none was found.

    Attributes:
        model_id: The model that serves the call, or ``None`` when resolution failed.
        step: The resolution step that chose it (see ``Resolution.step``).
        chosen_by: For step ``"hook"``, the plugin whose ``llm_default_model`` chose it.
        key: The resolved model's key state.
        skipped: Candidates refused on the way, each with its reason.
        error: Why no model could be chosen, when ``model_id`` is ``None``.
    """

    model_id: str | None
    step: ResolutionStep | None
    chosen_by: str | None
    key: KeyInfo | None
    skipped: tuple[str, ...]
    error: str | None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model_id": self.model_id,
            "step": self.step,
            "chosen_by": self.chosen_by,
            "key": None if self.key is None else self.key.to_json(),
            "skipped": list(self.skipped),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class PurposeRoute:
    """One purpose: who declared it, what is configured, and where its calls go.

    Attributes:
        name: The purpose name.
        registered: Whether an installed plugin registers it (``False``: only in configuration).
        owner: The declaring plugin, if registered.
        description: What it is for, if registered.
        recommended_model: The owner's ``Purpose.default_model``, if any.
        configured_model: ``purposes.<name>.model`` from configuration, if set.
        route: The model that actually resolves, and the step.
        allowed: The allowlist for this purpose, or ``None`` when every installed model is allowed.
        blocked_models: Models this purpose may never use (global and its own), sorted.
    """

    name: str
    registered: bool
    owner: str | None
    description: str | None
    recommended_model: str | None
    configured_model: str | None
    route: Route
    allowed: tuple[AllowedModel, ...] | None
    blocked_models: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "registered": self.registered,
            "owner": self.owner,
            "description": self.description,
            "recommended_model": self.recommended_model,
            "configured_model": self.configured_model,
            "resolved": self.route.to_json(),
            "allowed_models": (
                None if self.allowed is None else [model.to_json() for model in self.allowed]
            ),
            "blocked_models": list(self.blocked_models),
        }


@dataclass(frozen=True, slots=True)
class RoutingReport:
    """Everything the routing page and ``datasette llm purposes`` show.

    Attributes:
        purposes: Registered purposes in registration order, then configured-only ones.
        default_model: The configured ``default_model`` id, if any.
        default_route: Where a call without a purpose goes.
        models: The global allowlist, or ``None`` when every installed model is allowed.
        blocked_models: The global blocklist, sorted.
        require_keys: Whether models without an available key are left out of ``models()``.
        strict: Whether warnings stop startup.
        collisions: Purpose names registered by more than one owner.
        unregistered_purposes: Purposes configured but registered by no plugin.
        missing_models: Model ids in configuration that are not installed.
        problems: Every configuration problem (errors and warnings).
        installed_model_count: How many async models llm has installed.
    """

    purposes: tuple[PurposeRoute, ...]
    default_model: str | None
    default_route: Route
    models: tuple[str, ...] | None
    blocked_models: tuple[str, ...]
    require_keys: bool
    strict: bool
    collisions: tuple[PurposeCollision, ...]
    unregistered_purposes: tuple[UnregisteredPurpose, ...]
    missing_models: tuple[MissingModel, ...]
    problems: tuple[ConfigProblem, ...]
    installed_model_count: int

    def to_json(self) -> dict[str, object]:
        """Return the JSON document served at ``/-/llm.json``."""
        return {
            "purposes": [purpose.to_json() for purpose in self.purposes],
            "default_model": self.default_model,
            "default_resolved": self.default_route.to_json(),
            "models": None if self.models is None else list(self.models),
            "blocked_models": list(self.blocked_models),
            "require_keys": self.require_keys,
            "strict": self.strict,
            "collisions": [
                {
                    "name": collision.name,
                    "kept_owner": collision.kept_owner,
                    "ignored_owner": collision.ignored_owner,
                    "kept_description": collision.kept.description,
                    "ignored_description": collision.ignored.description,
                }
                for collision in self.collisions
            ],
            "unregistered_purposes": [
                {"name": item.name, "nearest": item.nearest} for item in self.unregistered_purposes
            ],
            "missing_models": [
                {"model_id": item.model_id, "path": item.path, "nearest": item.nearest}
                for item in self.missing_models
            ],
            "problems": [
                {"path": problem.path, "message": problem.message, "severity": problem.severity}
                for problem in self.problems
            ],
            "installed_model_count": self.installed_model_count,
        }


async def _route(datasette: Datasette, purpose: str | None) -> Route:
    from .client import LLM

    try:
        resolution = await LLM(datasette).resolve(purpose=purpose)
    except ModelNotFoundError as error:
        return Route(None, None, None, None, (), str(error))
    except KeyError as error:  # llm.UnknownModelError
        message = error.args[0] if error.args else repr(error)
        return Route(None, None, None, None, (), str(message))
    return Route(
        resolution.model_id,
        resolution.step,
        resolution.chosen_by,
        KeyInfo.from_status(resolution.key),
        resolution.skipped,
        None,
    )


async def _allowed(
    datasette: Datasette, config: LLMConfig, registry: ModelRegistry, purpose: str | None
) -> tuple[AllowedModel, ...] | None:
    from .keys import find_key

    allowlist = config.allowlist(purpose)
    if allowlist is None:
        return None
    purpose_config = config.purpose(purpose)
    ordered: list[str] = []
    if purpose_config is not None and purpose_config.model is not None:
        ordered.append(purpose_config.model.model_id)
    if purpose_config is not None and purpose_config.models is not None:
        ordered.extend(ref.model_id for ref in purpose_config.models)
    else:
        if config.default_model is not None:
            ordered.append(config.default_model.model_id)
        ordered.extend(config.models or ())
    ordered.extend(sorted(allowlist))
    blocklist = config.blocklist(purpose)
    allowed: list[AllowedModel] = []
    for model_id in dict.fromkeys(ordered):
        model = registry.by_name.get(model_id)
        key: KeyInfo | None = None
        if model is not None:
            _, status = await find_key(datasette, config, model, purpose, None)
            key = KeyInfo.from_status(status)
        allowed.append(AllowedModel(model_id, model is not None, model_id in blocklist, key))
    return tuple(allowed)


async def _purpose_route(
    datasette: Datasette,
    config: LLMConfig,
    registry: ModelRegistry,
    name: str,
    declared: Purpose | None,
) -> PurposeRoute:
    from .catalog import get_purpose_owner

    purpose_config = config.purpose(name)
    configured = purpose_config.model if purpose_config is not None else None
    return PurposeRoute(
        name=name,
        registered=declared is not None,
        owner=None if declared is None else get_purpose_owner(datasette, name),
        description=None if declared is None else declared.description,
        recommended_model=None if declared is None else declared.default_model,
        configured_model=None if configured is None else configured.model_id,
        route=await _route(datasette, name),
        allowed=await _allowed(datasette, config, registry, name),
        blocked_models=tuple(sorted(config.blocklist(name))),
    )


async def build_report(datasette: Datasette) -> RoutingReport:
    """Resolve every purpose as a call with no actor would, and collect what an operator needs.

    Raises:
        ConfigurationError: The configuration is malformed (``problems`` lists where).
    """
    from .catalog import get_purpose_collisions, get_purposes
    from .config import config_for
    from .registry import current_registry

    validation = validate_datasette(datasette)
    config = config_for(datasette)
    registry = current_registry()
    purposes = get_purposes(datasette)
    routes = [
        await _purpose_route(datasette, config, registry, purpose.name, purpose)
        for purpose in purposes
    ]
    registered = {purpose.name for purpose in purposes}
    for name in config.purposes:
        if name not in registered:
            routes.append(await _purpose_route(datasette, config, registry, name, None))
    return RoutingReport(
        purposes=tuple(routes),
        default_model=None if config.default_model is None else config.default_model.model_id,
        default_route=await _route(datasette, None),
        models=config.models,
        blocked_models=tuple(sorted(config.blocked_models)),
        require_keys=config.require_keys,
        strict=config.strict,
        collisions=tuple(get_purpose_collisions(datasette)),
        unregistered_purposes=tuple(find_unregistered_purposes(config, purposes)),
        missing_models=tuple(find_missing_models(config, registry)),
        problems=validation.problems,
        installed_model_count=len(registry.models),
    )
