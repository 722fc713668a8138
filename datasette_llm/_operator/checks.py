"""Check configuration against what is installed, for startup, ``check`` and the routing page.

``parse_config`` finds structural problems (wrong types, unknown keys). This module adds what can
only be known with the installed plugins and models at hand:

- options a model rejects (errors);
- purposes no plugin registered, models that are not installed, allowlists that leave a purpose
  with no model (warnings; errors under ``strict: true``);
- fallbacks the policy refuses (a blocklist, an allowlist without it), one equal to the model it
  stands behind, one listed twice, and a configured model lacking what a registered purpose
  requires (``Purpose.requires``): each a warning naming the configuration path, the purpose
  and the fix;
- the usage settings: a price for a model that is not installed (the nearest installed id
  suggested: a warning), a budget while ``usage: {enabled: false}`` (an error, since nothing
  would be counted), a budget for a purpose whose models have no price (a warning), or whose
  routed model has no ``max_tokens`` (in its options or by default) and no ``estimate_usd``:
  its prompts reserve nothing, so concurrent ones can overspend (a warning),
  ``usage: {database: NAME}`` naming no attached database (an error);
- two references to one model, through llm's aliases, giving it different limits (an error:
  ``parse_config`` sees only ids written alike).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..config.parser import limit_problems, parse_config
from ..config.source import raw_section, served_files_conflict
from ..config.values import CONFIG_ROOT, LLMConfig, settings_for
from ..coordination import RedisMissing
from ..errors import ConfigProblem, ConfigurationError, nearest, quoted, shown
from ..prompting.metering import MAX_TOKENS_OPTIONS, token_count
from ..routing.catalog import get_purposes
from ..routing.models import ModelRegistry, current_registry, option_problems
from ..routing.policy import Policies
from ..state import Slot, state_of
from ..usage.ledger import unknown_database

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config.values import LLMConfig, ModelRef
    from ..routing.models import ModelRegistry
    from ..routing.overlay import Overlaid
    from ..routing.policy import Policy
    from ..routing.purposes import Purpose

__all__ = [
    "MissingModel",
    "UnregisteredPurpose",
    "Validation",
    "fallback_problems",
    "find_missing_models",
    "find_unregistered_purposes",
    "ignored_override_problems",
    "purposes_or_problem",
    "requirement_problems",
    "startup_validation_deferred",
    "usage_problems",
    "validate",
    "validate_datasette",
]


# The usage settings.

WARNING: Final = "warning"


def usage_problems(
    config: LLMConfig, registry: ModelRegistry, databases: Collection[str] | None = None
) -> Iterator[ConfigProblem]:
    """Yield every problem of the ``pricing``, ``usage`` and ``budget`` settings.

    Args:
        databases: The names of the attached databases, or ``None`` not to check
            ``usage.database``.
    """
    database = config.usage.database
    if config.usage.enabled and database is not None and databases is not None:
        if database not in databases:
            yield unknown_database(database, databases)
    installed = [model.model_id for model in registry.models]
    for model_id in config.pricing:
        if registry.by_name.get(model_id) is None:
            suggestion = nearest(model_id, installed)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            yield ConfigProblem(
                f"{CONFIG_ROOT}.pricing.{model_id}",
                f"model {quoted(model_id)} is not installed, so this price is never used.{hint}",
                WARNING,
            )
    priced = {registry.canonical(name) for name in config.pricing}
    for name, purpose_config in config.purposes.items():
        budget = purpose_config.budget
        if budget is None:
            continue
        path = f"{CONFIG_ROOT}.purposes.{name}.budget"
        if not config.usage.enabled:
            yield ConfigProblem(
                path,
                "a budget needs the usage ledger, which usage: {enabled: false} turns off: "
                "nothing would count towards it. Remove the budget or enable usage.",
            )
            continue
        refs = [purpose_config.model, *settings_for(config, name).resilience.fallbacks]
        if purpose_config.model is None:
            refs.append(config.default_model)
        unpriced = [
            ref.model_id
            for ref in refs
            if ref is not None and registry.canonical(ref.model_id) not in priced
        ]
        if unpriced:
            names = ", ".join(quoted(model_id) for model_id in unpriced)
            yield ConfigProblem(
                path,
                f"{names} {'has' if len(unpriced) == 1 else 'have'} no price under "
                f"{CONFIG_ROOT}.pricing, so {'its' if len(unpriced) == 1 else 'their'} "
                "attempts add nothing to this budget. Give each a price.",
                WARNING,
            )
        routed = purpose_config.model or config.default_model
        if (
            budget.estimate_usd is None
            and routed is not None
            and registry.canonical(routed.model_id) in priced  # else warned above
        ):
            installed_model = registry.by_name.get(routed.model_id)
            if installed_model is not None and not _caps_output(routed, installed_model):
                yield ConfigProblem(
                    path,
                    f"{quoted(routed.model_id)} has no max_tokens in its options nor by default, "
                    "so its prompts reserve nothing of this budget while they run: prompts "
                    "started at once can all be admitted and spend past it. Set "
                    f"{path}.estimate_usd (US dollars one prompt may cost), or max_tokens in "
                    "the model's options.",
                    WARNING,
                )


def _caps_output(ref: ModelRef, model: object) -> bool:
    """Whether ``ref``'s options or ``model``'s default cap its output tokens (``max_tokens``
    or the names llm's plugins give it), which a prompt's estimate for a budget needs."""
    if token_count(getattr(model, "default_max_tokens", None)) is not None:
        return True
    return any(token_count(ref.options.get(name)) is not None for name in MAX_TOKENS_OPTIONS)


# Fallbacks and requirements.


def _subject(name: str | None) -> str:
    return f"purpose {name!r}" if name is not None else "calls without a purpose"


def _subjects(names: list[str | None]) -> str:
    shown = [_subject(name) for name in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _fallbacks(config: LLMConfig, name: str | None) -> tuple[bool, list[tuple[str, ModelRef]]]:
    """Whether ``name`` has fallbacks of its own, and the fallbacks that apply, with paths."""
    settings = settings_for(config, name)
    return settings.is_own("fallbacks"), settings.fallback_paths()


def _primary(config: LLMConfig, name: str | None) -> tuple[str, ModelRef] | None:
    """The configured model a purpose's fallbacks stand behind, with its path."""
    purpose_config = config.purpose(name)
    if purpose_config is not None and purpose_config.model is not None:
        return f"{CONFIG_ROOT}.purposes.{name}.model", purpose_config.model
    if config.default_model is not None:
        return f"{CONFIG_ROOT}.default_model", config.default_model
    return None


def _own_list_problems(
    policy: Policy, name: str | None, written: list[tuple[str, ModelRef]]
) -> Iterator[ConfigProblem]:
    """A fallback equal to the model it stands behind, or listed twice in the same list."""
    primary = _primary(policy.config, name)
    primary_id = None if primary is None else policy.canonical(primary[1].model_id)
    seen: dict[str, str] = {}
    for path, ref in written:
        model_id = policy.canonical(ref.model_id)
        if primary is not None and model_id == primary_id:
            yield ConfigProblem(
                path,
                f"fallback {quoted(ref.model_id)} is the model it stands behind for "
                f"{_subject(name)} ({primary[0]}), so it is never tried as a fallback: a "
                "failing model is retried (retries), not fallen back to. Remove it from "
                "fallbacks, or list another model.",
                WARNING,
            )
        elif model_id in seen:
            yield ConfigProblem(
                path,
                f"fallback {quoted(ref.model_id)} is already listed at {seen[model_id]}, so "
                "this entry is never tried. Remove one of them.",
                WARNING,
            )
        seen.setdefault(model_id, path)


def fallback_problems(policies: Policies, purpose_names: list[str]) -> Iterator[ConfigProblem]:
    """Warn about every installed fallback that some purpose would never try (see the module)."""
    config, registry = policies.config, policies.registry
    refused: dict[tuple[str, str, str | None], list[str | None]] = {}
    for name in [*purpose_names, None]:
        own, written = _fallbacks(config, name)
        if not written:
            continue
        policy = policies.of(name)
        if own or name is None:
            yield from _own_list_problems(policy, name, written)
        for path, ref in written:
            refusal = policy.refusal(ref.model_id)
            if ref.model_id not in registry.by_name or refusal is None:
                continue  # not installed (reported with every missing model), or admitted
            blocked_at = None
            if refusal.kind == "blocked":
                blocked_at = policy.blocked[policy.canonical(ref.model_id)]
            refused.setdefault((path, ref.model_id, blocked_at), []).append(name)
    for (path, model_id, blocked_at), names in refused.items():
        if blocked_at is not None:
            why = f"it is in {CONFIG_ROOT}.{blocked_at}"
            fix = "Remove it from fallbacks, or from the blocklist."
        else:
            own_list = names[0] is not None and len(names) == 1
            where = f"{CONFIG_ROOT}.purposes.{names[0]}.models" if own_list else None
            why = "it is not in the allowlist"
            fix = f"Add it to {where or f'{CONFIG_ROOT}.models'}, or remove it from fallbacks."
        yield ConfigProblem(
            path,
            f"fallback {quoted(model_id)} is never tried for {_subjects(names)}: {why}. {fix}",
            WARNING,
        )


def _configured(config: LLMConfig, name: str) -> Iterator[tuple[str, ModelRef]]:
    """Every model a purpose may be routed or fall back to by configuration, with paths."""
    purpose_config = config.purpose(name)
    own_model = purpose_config is not None and purpose_config.model is not None
    if purpose_config is not None:
        if purpose_config.model is not None:
            yield f"{CONFIG_ROOT}.purposes.{name}.model", purpose_config.model
        for index, ref in enumerate(purpose_config.models or ()):
            yield f"{CONFIG_ROOT}.purposes.{name}.models[{index}]", ref
    yield from _fallbacks(config, name)[1]
    if not own_model and config.default_model is not None:
        yield f"{CONFIG_ROOT}.default_model", config.default_model


def requirement_problems(
    config: LLMConfig, registry: ModelRegistry, purposes: list[Purpose]
) -> Iterator[ConfigProblem]:
    """Warn about each configured model lacking what a registered purpose requires."""
    for purpose in purposes:
        if not purpose.requires:
            continue
        declared = f" (declared by {purpose.owner})" if purpose.owner else ""
        for path, ref in _configured(config, purpose.name):
            model = registry.by_name.get(ref.model_id)
            if model is None:
                continue  # reported as not installed
            lacking = purpose.requires.missing(model)
            if not lacking:
                continue
            needs = " or ".join(lacking)
            yield ConfigProblem(
                path,
                f"{quoted(ref.model_id)} does not support {needs}, which purpose "
                f"{purpose.name!r} requires{declared}, so it never serves that purpose. Choose "
                f"a model that supports {needs}.",
                WARNING,
            )


# Configuration against what is installed.

logger = logging.getLogger("datasette_llm")

ERROR: Final = "error"

STARTUP_LISTED_UNREGISTERED: Final = 3
"""At startup, more unregistered purposes than this make one summary warning, not one each."""


@dataclass(frozen=True, slots=True)
class MissingModel:
    """A model id named in configuration that no installed llm plugin provides.

    Attributes:
        model_id: The id as written in configuration.
        path: Where it is written, e.g. ``plugins.datasette-llm.purposes.x.models[1]``.
        nearest: The closest installed model id or alias, if any is close.
    """

    model_id: str
    path: str
    nearest: str | None


@dataclass(frozen=True, slots=True)
class UnregisteredPurpose:
    """A purpose configured under ``purposes:`` that no installed plugin registers.

    Attributes:
        name: The purpose name as written in configuration.
        nearest: The closest registered purpose name, if any is close.
    """

    name: str
    nearest: str | None


@dataclass(frozen=True, slots=True)
class Validation:
    """Every problem found in the configuration, and whether warnings count as errors.

    Attributes:
        problems: Errors and warnings, errors first, each naming its configuration path.
        strict: Whether ``strict: true`` is set, turning warnings into errors.
        config: The parsed configuration, or ``None`` when it is structurally malformed.
    """

    problems: tuple[ConfigProblem, ...]
    strict: bool
    config: LLMConfig | None

    @property
    def errors(self) -> tuple[ConfigProblem, ...]:
        """The problems that stop startup: errors, and warnings too under ``strict``."""
        if self.strict:
            return self.problems
        return tuple(problem for problem in self.problems if problem.severity == ERROR)

    @property
    def warnings(self) -> tuple[ConfigProblem, ...]:
        """The problems that are only logged (none under ``strict``)."""
        if self.strict:
            return ()
        return tuple(problem for problem in self.problems if problem.severity != ERROR)

    @property
    def ok(self) -> bool:
        """Whether nothing stops startup."""
        return not self.errors


def _model_ids(config: LLMConfig) -> Iterator[tuple[str, str]]:
    """Yield ``(path, model_id)`` for every model id written in the configuration."""
    for path, ref in config.all_refs():
        yield path, ref.model_id
    for index, model_id in enumerate(config.models or ()):
        yield f"{CONFIG_ROOT}.models[{index}]", model_id
    for model_id in sorted(config.blocked_models):
        yield f"{CONFIG_ROOT}.blocked_models", model_id
    for name, purpose_config in config.purposes.items():
        for model_id in sorted(purpose_config.blocked_models):
            yield f"{CONFIG_ROOT}.purposes.{name}.blocked_models", model_id


def find_missing_models(config: LLMConfig, registry: ModelRegistry) -> list[MissingModel]:
    """Return every model id in ``config`` that is not installed, with the nearest installed id."""
    installed = registry.by_name
    suggestions: dict[str, str | None] = {}  # a long list repeats ids: look each up once
    missing: list[MissingModel] = []
    for path, model_id in _model_ids(config):
        if model_id in installed:
            continue
        if model_id not in suggestions:
            suggestions[model_id] = nearest(model_id, installed)
        missing.append(MissingModel(model_id, path, suggestions[model_id]))
    return missing


def find_unregistered_purposes(
    config: LLMConfig, purposes: list[Purpose]
) -> list[UnregisteredPurpose]:
    """Return every configured purpose no plugin registers, with the nearest registered name."""
    names = [purpose.name for purpose in purposes]
    registered = set(names)
    return [
        UnregisteredPurpose(name, nearest(name, names))
        for name in config.purposes
        if name not in registered
    ]


def ignored_override_problems(layers: Overlaid) -> list[ConfigProblem]:
    """A warning for each routing override stored but not in effect, with the reason: calls
    route by datasette.yaml for that purpose until it is reverted or fits again."""
    problems = []
    for name, reason in layers.ignored.items():
        problems.append(
            ConfigProblem(
                f"{CONFIG_ROOT}.purposes.{name}",
                f"the routing override stored for purpose {name!r} on /-/llm is ignored: "
                f"{reason}. Calls route by datasette.yaml; revert the override on /-/llm, or "
                "change it so that it fits.",
                severity=WARNING,
            )
        )
    return problems


def _option_problems(config: LLMConfig, registry: ModelRegistry) -> Iterator[ConfigProblem]:
    for path, ref in config.all_refs():
        model = registry.by_name.get(ref.model_id)
        if not ref.options or model is None:
            continue
        for problem in option_problems(model, ref.options):
            where = f"{path}.options.{problem.option}" if problem.option else f"{path}.options"
            yield ConfigProblem(where, problem.message)


def _allowlist_problems(policies: Policies, purpose_names: list[str]) -> Iterator[ConfigProblem]:
    """Warn about every allowlist that leaves a purpose with no installed model it may use."""
    config, registry = policies.config, policies.registry
    checks: list[tuple[str | None, str]] = []
    if config.models is not None:
        checks.append((None, f"{CONFIG_ROOT}.models"))
    for name in purpose_names:
        purpose_config = config.purpose(name)
        if purpose_config is not None and purpose_config.models is not None:
            checks.append((name, f"{CONFIG_ROOT}.purposes.{name}.models"))
        elif purpose_config is not None and config.models is not None:
            checks.append((name, f"{CONFIG_ROOT}.purposes.{name}"))
    for purpose, path in checks:
        policy = policies.of(purpose)
        if policy.allowlist is None:
            continue
        usable = [
            model_id
            for model_id in policy.allowlist
            if model_id in registry.by_name and policy.refusal(model_id) is None
        ]
        if usable:
            continue
        subject = f"purpose {purpose!r}" if purpose is not None else "calls without a purpose"
        suggestion = next(
            (model.model_id for model in registry.models if model.model_id not in policy.blocked),
            None,
        )
        fix = f" Add an installed model such as {suggestion!r}." if suggestion else ""
        yield ConfigProblem(
            path,
            f"the allowlist leaves {subject} with no installed, unblocked model.{fix}",
            WARNING,
        )


def _blocked_choice_problems(policies: Policies) -> Iterator[ConfigProblem]:
    """Warn about a configured default that a blocklist refuses, so it is never used.

    (A configured default is always in its allowlist, so only a blocklist can refuse it.)
    """
    config = policies.config
    if config.default_model is not None:
        refusal = policies.of(None).refusal(config.default_model.model_id)
        if refusal is not None:
            yield ConfigProblem(
                f"{CONFIG_ROOT}.default_model",
                f"{quoted(config.default_model.model_id)} is blocked ({refusal.reason}), so it "
                "is never used. Remove it from one of them.",
                WARNING,
            )
    for name, purpose_config in config.purposes.items():
        model = purpose_config.model
        if model is None:
            continue
        refusal = policies.of(name).refusal(model.model_id)
        if refusal is not None:
            yield ConfigProblem(
                f"{CONFIG_ROOT}.purposes.{name}.model",
                f"{quoted(model.model_id)} is blocked for purpose {name!r} ({refusal.reason}), "
                "so it is never used. Remove it from the blocklist or choose another model.",
                WARNING,
            )


def _unregistered_problems(
    unregistered: list[UnregisteredPurpose], purposes: list[Purpose], limit: int | None
) -> Iterator[ConfigProblem]:
    """Warn about each purpose no plugin registers, or once for all when more than ``limit``."""
    registered = ", ".join(sorted(purpose.name for purpose in purposes)) or "none"
    if limit is not None and len(unregistered) > limit:
        names = ", ".join(repr(item.name) for item in unregistered[:limit])
        yield ConfigProblem(
            f"{CONFIG_ROOT}.purposes",
            f"{len(unregistered)} configured purposes are not registered by any plugin: {names}, "
            f"… (and {len(unregistered) - limit} more). Registered purposes: {registered}. "
            "Run 'datasette llm check' to list each with the nearest registered name.",
            WARNING,
        )
        return
    for item in unregistered:
        hint = f" Did you mean {item.nearest!r}?" if item.nearest else ""
        yield ConfigProblem(
            f"{CONFIG_ROOT}.purposes.{item.name}",
            f"no installed plugin registers the purpose {item.name!r}.{hint} "
            f"Registered purposes: {registered}.",
            WARNING,
        )


def validate(
    raw: object,
    purposes: list[Purpose],
    registry: ModelRegistry,
    *,
    list_unregistered: int | None = None,
    databases: Collection[str] | None = None,
) -> Validation:
    """Check raw plugin configuration against the registered purposes and installed models.

    Args:
        list_unregistered: Warn about at most this many purposes no plugin registers one by
            one; more make one summary warning (startup logs). ``None``: one warning each.
        databases: The names of the attached databases, to check ``usage.database`` against
            (``None``: not checked).
    """
    try:
        config = parse_config(raw)
    except ConfigurationError as error:
        strict = isinstance(raw, Mapping) and raw.get("strict") is True
        return Validation(error.problems, strict, None)
    problems: list[ConfigProblem] = list(_option_problems(config, registry))
    problems.extend(limit_problems(config, registry.canonical))
    for missing in find_missing_models(config, registry):
        hint = f" Did you mean {missing.nearest!r}?" if missing.nearest else ""
        problems.append(
            ConfigProblem(
                missing.path,
                f"model {quoted(missing.model_id)} is not installed.{hint} Run 'llm models' to "
                "list installed models, or install the llm plugin that provides it.",
                WARNING,
            )
        )
    unregistered = find_unregistered_purposes(config, purposes)
    problems.extend(_unregistered_problems(unregistered, purposes, list_unregistered))
    names = list(dict.fromkeys([*(purpose.name for purpose in purposes), *config.purposes]))
    policies = Policies(config, registry)
    problems.extend(_blocked_choice_problems(policies))
    problems.extend(_allowlist_problems(policies, names))
    problems.extend(fallback_problems(policies, names))
    problems.extend(requirement_problems(config, registry, purposes))
    problems.extend(usage_problems(config, registry, databases))
    problems.extend(_redis_missing(config))
    problems.sort(key=lambda problem: problem.severity != ERROR)
    return Validation(tuple(problems), config.strict, config)


def _redis_missing(config: LLMConfig) -> list[ConfigProblem]:
    """An error when ``coordination`` names Redis and redis-py is not installed: known at
    startup, not at the first prompt. redis-py is imported only then."""
    if config.coordination is None:
        return []
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        return [ConfigProblem(f"{CONFIG_ROOT}.coordination.redis", str(RedisMissing()))]
    return []


def purposes_or_problem(datasette: Datasette) -> tuple[list[Purpose], ConfigProblem | None]:
    """Return the registered purposes, or none and the problem when collecting them fails.

    A ``register_llm_purposes`` implementation that raises (or returns the wrong type) should
    show on the routing page and in ``check`` as a problem, not as a crash.
    """
    try:
        return get_purposes(datasette), None
    except Exception as error:
        return [], ConfigProblem(
            "register_llm_purposes",
            f"collecting the registered purposes failed: {type(error).__name__}: "
            f"{shown(error)}. Fix or uninstall the plugin whose register_llm_purposes fails; "
            "until then no purpose counts as registered.",
        )


def validate_datasette(datasette: Datasette, *, list_unregistered: int | None = None) -> Validation:
    """Check ``datasette``'s ``datasette-llm`` configuration (see ``validate``)."""
    _, _, section = raw_section(datasette)
    purposes, catalog_problem = purposes_or_problem(datasette)
    validation = validate(
        section,
        purposes,
        current_registry(datasette),
        list_unregistered=list_unregistered,
        databases=list(datasette.databases),
    )
    if catalog_problem is None:
        return validation
    return Validation((catalog_problem, *validation.problems), validation.strict, validation.config)


_DEFERRED: Final[Slot[bool]] = Slot("whether the CLI validates instead of the startup hook")


def defer_startup_validation(datasette: Datasette) -> None:
    """Make the ``startup`` hook leave validation to the caller (the ``datasette llm`` CLI)."""
    state_of(datasette).put(_DEFERRED, True)


def startup_validation_deferred(datasette: Datasette) -> bool:
    """Whether the ``startup`` hook leaves validation to the ``datasette llm`` CLI."""
    return state_of(datasette).get(_DEFERRED) is True


def check_at_startup(datasette: Datasette) -> None:
    """Log warnings; raise ``StartupError`` listing every error (and warning under ``strict``)."""
    if startup_validation_deferred(datasette):
        return
    conflict = served_files_conflict()
    if conflict is not None:
        logger.warning("datasette-llm configuration: %s", conflict)
    validation = validate_datasette(datasette, list_unregistered=STARTUP_LISTED_UNREGISTERED)
    for problem in validation.warnings:
        logger.warning("datasette-llm configuration: %s", problem)
    if validation.errors:
        from datasette.utils import StartupError

        message = str(ConfigurationError(validation.errors))
        if validation.strict and any(p.severity != ERROR for p in validation.errors):
            message += "\nWarnings count as errors because strict: true is set."
        raise StartupError(message) from None
