"""Validation of fallbacks and requirements: configured models that would never be tried.

A fallback the policy refuses (a blocklist, an allowlist without it), one equal to the model it
stands behind, one listed twice, and a configured model lacking what a registered purpose
requires (``Purpose.requires``) are each a warning naming the configuration path, the purpose,
and the fix. A fallback that is not installed is reported with every other missing model
(``validation.find_missing_models``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ..config import CONFIG_ROOT
from ..errors import ConfigProblem, quoted
from ..policy import policy_for

if TYPE_CHECKING:
    from ..config import LLMConfig, ModelRef
    from ..models import ModelRegistry
    from ..policy import Policy
    from ..purposes import Purpose

__all__ = ["fallback_problems", "requirement_problems"]

WARNING: Final = "warning"


def _subject(name: str | None) -> str:
    return f"purpose {name!r}" if name is not None else "calls without a purpose"


def _subjects(names: list[str | None]) -> str:
    shown = [_subject(name) for name in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _fallbacks(config: LLMConfig, name: str | None) -> tuple[bool, list[tuple[str, ModelRef]]]:
    """Whether ``name`` has fallbacks of its own, and the fallbacks that apply, with paths."""
    purpose_config = config.purpose(name)
    if purpose_config is not None and purpose_config.fallbacks is not None:
        base = f"{CONFIG_ROOT}.purposes.{name}.fallbacks"
        return True, [(f"{base}[{i}]", ref) for i, ref in enumerate(purpose_config.fallbacks)]
    base = f"{CONFIG_ROOT}.fallbacks"
    return False, [(f"{base}[{i}]", ref) for i, ref in enumerate(config.resilience.fallbacks)]


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


def fallback_problems(
    config: LLMConfig, registry: ModelRegistry, purpose_names: list[str]
) -> Iterator[ConfigProblem]:
    """Warn about every installed fallback that some purpose would never try (see the module)."""
    refused: dict[tuple[str, str, str | None], list[str | None]] = {}
    for name in [*purpose_names, None]:
        own, written = _fallbacks(config, name)
        if not written:
            continue
        policy = policy_for(config, name, registry)
        if own or name is None:
            yield from _own_list_problems(policy, name, written)
        for path, ref in written:
            if ref.model_id not in registry.by_name or policy.refusal(ref.model_id) is None:
                continue  # not installed (reported with every missing model), or admitted
            blocked_at = policy.blocked.get(policy.canonical(ref.model_id))
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
