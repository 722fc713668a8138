"""datasette-llm's own implementations of Datasette and datasette-secrets hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .config.values import LLMConfig
from .errors import ConfigurationError
from .routing.keys import provider_secret_name
from .routing.models import ModelRegistry, current_registry
from .routing.overlay import config_for
from .routing.permissions import default_allow, purpose_rules
from .state import Slot, state_of
from .typing import hookimpl

if TYPE_CHECKING:
    import click
    from datasette.app import Datasette
    from datasette.permissions import Action, PermissionSQL
    from datasette_secrets import Secret

    from .actors import Actor

__all__ = [
    "menu_links",
    "permission_resources_sql",
    "register_actions",
    "register_commands",
    "register_routes",
    "register_secrets",
    "startup",
]

KEY_HELP_URLS: Final = {
    "openai": ("https://platform.openai.com/api-keys", "Get an OpenAI API key"),
    "anthropic": ("https://console.anthropic.com/settings/keys", "Get an Anthropic API key"),
    "gemini": ("https://aistudio.google.com/app/apikey", "Get a Google AI API key"),
    "google": ("https://aistudio.google.com/app/apikey", "Get a Google AI API key"),
    "groq": ("https://console.groq.com/keys", "Get a Groq API key"),
    "mistral": ("https://console.mistral.ai/api-keys/", "Get a Mistral API key"),
}

# datasette-secrets asks for every secret each time it reads one: build the list once per
# configuration and set of installed models.
_SECRETS: Final[Slot[tuple[LLMConfig, ModelRegistry, list[Secret]]]] = Slot(
    "the secrets registered with datasette-secrets"
)


def _secrets_of(config: LLMConfig, registry: ModelRegistry) -> list[Secret]:
    from datasette_secrets import Secret

    secrets: dict[str, Secret] = {}
    blocked = {registry.canonical(name) for name in config.blocked_models}
    for model in registry.keyed:
        if model.model_id in blocked:
            continue  # nobody is routed to it: its provider's key is not asked for
        needs_key = str(model.needs_key)
        name = provider_secret_name(needs_key)
        url, label = KEY_HELP_URLS.get(needs_key, (None, None))
        secrets.setdefault(
            name,
            Secret(
                name=name,
                description=f"API key for {needs_key} models",
                obtain_url=url,
                obtain_label=label,
            ),
        )
    for path, ref in config.all_refs():
        if ref.key is not None and ref.key.source == "secret":
            secrets.setdefault(
                ref.key.name, Secret(name=ref.key.name, description=f"API key configured at {path}")
            )
    return list(secrets.values())


@hookimpl
def register_secrets(datasette: Datasette) -> list[Secret]:
    """Register a secret for every provider key and every ``key`` secret named in configuration."""
    registry = current_registry(datasette)
    try:
        config = config_for(datasette)
    except ConfigurationError:
        config = LLMConfig()
    state = state_of(datasette)
    cached = state.get(_SECRETS)
    if cached is None or cached[0] is not config or cached[1] is not registry:
        cached = state.put(_SECRETS, (config, registry, _secrets_of(config, registry)))
    return cached[2]


@hookimpl
def register_actions(datasette: Datasette) -> list[Action]:
    """Register ``llm-view-routing`` (the ``/-/llm`` page), ``llm-use``, ``llm-manage-routing``."""
    from datasette.permissions import Action

    from ._operator.views import VIEW_ROUTING
    from .routing.permissions import MANAGE_ROUTING, USE, PurposeResource

    return [
        Action(
            name=VIEW_ROUTING,
            description="View datasette-llm's purpose routing page (/-/llm)",
        ),
        Action(
            name=USE,
            description="Use a model for a datasette-llm purpose (allowed by default)",
            resource_class=PurposeResource,
        ),
        Action(
            name=MANAGE_ROUTING,
            description="Change datasette-llm's routing and test routes (denied by default)",
        ),
    ]


@hookimpl
def register_routes(datasette: Datasette) -> list[tuple[str, object]]:
    """Serve the routing page (``/-/llm``, ``/-/llm.json``), route tests (``/-/llm/test/*``),
    each purpose's page and its override form (``/-/llm/purposes/<name>``) and the actor
    check (``/-/llm/check-actor``)."""
    from ._operator.edit import EDIT_ROUTE_PATTERN
    from ._operator.live import TEST_ROUTE_PATTERN, route_test_view
    from ._operator.views import (
        CHECK_ACTOR_PATTERN,
        ROUTE_PATTERN,
        check_actor_view,
        purpose_view,
        routing_view,
    )

    return [
        (ROUTE_PATTERN, routing_view),
        (TEST_ROUTE_PATTERN, route_test_view),
        (EDIT_ROUTE_PATTERN, purpose_view),  # a GET: its page; a POST: its override form
        (CHECK_ACTOR_PATTERN, check_actor_view),
    ]


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``datasette llm purposes`` and ``datasette llm check``."""
    from ._operator.cli import add_commands

    add_commands(cli)


@hookimpl
def startup(datasette: Datasette) -> object:
    """Stop startup on configuration errors; log warnings (errors too under ``strict``); load
    the routing overrides stored in the internal database, and with ``coordination: {redis:
    ...}`` listen for those other processes save (``coordination.watch_overrides``; not for the
    Datasette a ``datasette llm`` command builds); then log each configured model without an
    API key (``report.log_key_problems_at_startup``)."""
    from ._operator.checks import check_at_startup, startup_validation_deferred
    from ._operator.report import log_key_problems_at_startup
    from .config.overrides import load_overrides
    from .coordination import watch_overrides

    check_at_startup(datasette)

    async def inner() -> None:
        await load_overrides(datasette)
        if not startup_validation_deferred(datasette):
            watch_overrides(datasette)
        await log_key_problems_at_startup(datasette)

    return inner


@hookimpl
def menu_links(datasette: Datasette, actor: dict[str, object] | None) -> object:
    """Link to the routing page for actors allowed to view it."""
    from ._operator.views import can_view_routing

    async def inner() -> list[dict[str, str]]:
        if not await can_view_routing(datasette, actor):
            return []
        return [{"href": datasette.urls.path("/-/llm"), "label": "LLM routing"}]

    return inner


@hookimpl
def shutdown(datasette: Datasette) -> object:
    """Write the usage rows still waiting, then stop listening through Redis and close the
    coordinator's connections (on Datasette versions that have this hook)."""
    from .coordination import close_coordination
    from .usage.ledger import flush_usage

    async def inner() -> None:
        await flush_usage(datasette)
        await close_coordination(datasette)

    return inner


@hookimpl
def permission_resources_sql(
    datasette: Datasette, actor: Actor | None, action: str
) -> list[PermissionSQL]:
    """Allow ``llm-use`` by default, and apply each purpose's ``allow:`` to it.

    The rules are ``datasette_llm.routing.permissions.default_allow`` and ``purpose_rules``.
    """
    rules = (default_allow(datasette, action), purpose_rules(datasette, actor, action))
    return [rule for rule in rules if rule is not None]
