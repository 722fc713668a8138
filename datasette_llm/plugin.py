"""datasette-llm's own implementations of Datasette and datasette-secrets hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasette import hookimpl

from .config import config_for
from .errors import ConfigurationError
from .keys import provider_secret_name
from .registry import current_registry

if TYPE_CHECKING:
    import click
    from datasette.app import Datasette
    from datasette.permissions import Action
    from datasette_secrets import Secret

__all__ = [
    "menu_links",
    "register_actions",
    "register_commands",
    "register_routes",
    "register_secrets",
    "startup",
]

KEY_HELP_URLS = {
    "openai": ("https://platform.openai.com/api-keys", "Get an OpenAI API key"),
    "anthropic": ("https://console.anthropic.com/settings/keys", "Get an Anthropic API key"),
    "gemini": ("https://aistudio.google.com/app/apikey", "Get a Google AI API key"),
    "google": ("https://aistudio.google.com/app/apikey", "Get a Google AI API key"),
    "groq": ("https://console.groq.com/keys", "Get a Groq API key"),
    "mistral": ("https://console.mistral.ai/api-keys/", "Get a Mistral API key"),
}


@hookimpl
def register_secrets(datasette: Datasette) -> list[Secret]:
    """Register a secret for every provider key and every ``key`` named in configuration."""
    from datasette_secrets import Secret

    secrets: list[Secret] = []
    seen: set[str] = set()
    for model in current_registry().keyed:
        needs_key = getattr(model, "needs_key", None)
        if not needs_key:
            continue
        name = provider_secret_name(needs_key)
        if name in seen:
            continue
        seen.add(name)
        url, label = KEY_HELP_URLS.get(needs_key, (None, None))
        secrets.append(
            Secret(
                name=name,
                description=f"API key for {needs_key} models",
                obtain_url=url,
                obtain_label=label,
            )
        )
    try:
        config = config_for(datasette)
    except ConfigurationError:
        return secrets
    for path, ref in config.all_refs():
        if ref.key and ref.key not in seen:
            seen.add(ref.key)
            secrets.append(Secret(name=ref.key, description=f"API key configured at {path}"))
    return secrets


@hookimpl
def register_actions(datasette: Datasette) -> list[Action]:
    """Register ``llm-view-routing``, the action guarding the ``/-/llm`` routing page."""
    from datasette.permissions import Action

    from .views import VIEW_ROUTING

    return [
        Action(
            name=VIEW_ROUTING,
            description="View datasette-llm's purpose routing page (/-/llm)",
        )
    ]


@hookimpl
def register_routes(datasette: Datasette) -> list[tuple[str, object]]:
    """Serve the routing page at ``/-/llm`` and ``/-/llm.json``."""
    from .views import ROUTE_PATTERN, routing_view

    return [(ROUTE_PATTERN, routing_view)]


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``datasette llm purposes`` and ``datasette llm check``."""
    from .cli import add_commands

    add_commands(cli)


@hookimpl
def startup(datasette: Datasette) -> None:
    """Stop startup on configuration errors; log warnings (errors too under ``strict``)."""
    from .validation import check_at_startup

    check_at_startup(datasette)


@hookimpl
def menu_links(datasette: Datasette, actor: dict[str, object] | None) -> object:
    """Link to the routing page for actors allowed to view it."""
    from .views import can_view_routing

    async def inner() -> list[dict[str, str]]:
        if not await can_view_routing(datasette, actor):
            return []
        return [{"href": datasette.urls.path("/-/llm"), "label": "LLM routing"}]

    return inner
