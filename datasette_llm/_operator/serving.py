"""Whether every purpose can be served: what ``datasette llm check`` adds to validation.

Validation looks at the configuration; this looks at the routing report, which routed every
purpose for real. A purpose (registered or configured) that no model can serve is an error:
its calls raise ``ModelNotFoundError`` (a configured model that is not installed, every candidate
refused, nothing configured). A configured model passed over for want of an API key (under
``require_keys``) while another model serves the purpose is a warning: calls go elsewhere than
configured. So is a fallback without a key, or one a filter hook removes: it is never tried.
Keys are only looked for (``key_status``), never read: checking is not a use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ..config import CONFIG_ROOT
from ..errors import ConfigProblem, quoted
from ..keys import key_status
from ..policy import policy_for

if TYPE_CHECKING:
    from datasette.app import Datasette

    from ..config import LLMConfig, ModelRef
    from ..models import ModelRegistry
    from .report import Route, RoutingReport

__all__ = ["serving_problems"]

_ASKED: Final = frozenset({"keyless", "filtered", "unchecked"})
"""Refusals only asking the policy finds; validation reports the configuration's own."""


def _configured(config: LLMConfig, report: RoutingReport) -> Iterator[tuple[str | None, ModelRef]]:
    """Yield ``(purpose, reference)`` for every configured model a route should start from."""
    for purpose in report.purposes:
        purpose_config = config.purpose(purpose.name)
        if purpose_config is not None and purpose_config.model is not None:
            yield purpose.name, purpose_config.model
    if config.default_model is not None:
        yield None, config.default_model


async def _key_problem(
    datasette: Datasette,
    config: LLMConfig,
    registry: ModelRegistry,
    purpose: str | None,
    ref: ModelRef,
    route: Route,
) -> ConfigProblem | None:
    model = registry.by_name.get(ref.model_id)
    policy = policy_for(config, purpose, registry)
    if model is None or policy.refusal(ref.model_id) is not None:
        return None  # not installed, or blocked: validation already says so
    status = await key_status(datasette, policy.reference(ref.model_id).keys, model)
    if status.available:
        return None
    calls = f"calls for purpose {purpose!r}" if purpose is not None else "calls without a purpose"
    path = f"{CONFIG_ROOT}.purposes.{purpose}.model" if purpose else f"{CONFIG_ROOT}.default_model"
    return ConfigProblem(
        path,
        f"{quoted(ref.model_id)} has no API key, so {calls} go to "
        f"{quoted(route.model_id)} instead. Set the secret {status.secret_name} "
        "(datasette-secrets, or the environment variable "
        f"DATASETTE_SECRETS_{status.secret_name}), or configure another model.",
        "warning",
    )


def _fallback_problems(report: RoutingReport) -> list[ConfigProblem]:
    """Warn once per fallback the policy refuses when asked (a key, a filter hook)."""
    refused: dict[tuple[str, str, str, bool], list[str | None]] = {}
    chains = [(purpose.name, purpose.chain) for purpose in report.purposes]
    for name, chain in [*chains, (None, report.default_chain)]:
        for link in chain.fallbacks:
            if link.path is not None and link.refused_as in _ASKED:
                key = (link.path, link.model_id, link.refusal or "", link.refused_as == "keyless")
                refused.setdefault(key, []).append(name)
    problems = []
    for (path, model_id, refusal, keyless), names in refused.items():
        subjects = ", ".join(
            f"purpose {name!r}" if name is not None else "calls without a purpose" for name in names
        )
        fix = (
            "Set the secret, or remove it from fallbacks (a fallback is only tried with its "
            "key, whatever require_keys says)."
            if keyless
            else "Fix the plugin, or remove it from fallbacks."
        )
        problems.append(
            ConfigProblem(
                path,
                f"fallback {quoted(model_id)} is never tried for {subjects}: {refusal}. {fix}",
                "warning",
            )
        )
    return problems


async def serving_problems(
    datasette: Datasette, report: RoutingReport, config: LLMConfig, registry: ModelRegistry
) -> list[ConfigProblem]:
    """Return an error for every purpose no model can serve, and key warnings (see the module)."""
    problems: list[ConfigProblem] = []
    for purpose in report.purposes:
        if purpose.route.model_id is None:
            problems.append(
                ConfigProblem(
                    f"{CONFIG_ROOT}.purposes.{purpose.name}",
                    f"purpose {purpose.name!r} cannot be served: {purpose.route.error}",
                )
            )
    default_route = report.default_route
    if config.default_model is not None and default_route.model_id is None:
        problems.append(
            ConfigProblem(
                f"{CONFIG_ROOT}.default_model",
                f"calls without a purpose cannot be served: {default_route.error}",
            )
        )
    problems.extend(_fallback_problems(report))
    if not config.require_keys:
        return problems
    routes = {purpose.name: purpose.route for purpose in report.purposes}
    for name, ref in _configured(config, report):
        route = routes[name] if name is not None else default_route
        if route.model_id is None or route.model_id == registry.canonical(ref.model_id):
            continue
        problem = await _key_problem(datasette, config, registry, name, ref, route)
        if problem is not None:
            problems.append(problem)
    return problems
