"""API key resolution: configured secret, provider secret, then llm's own key store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from .config import LLMConfig
    from .types import Actor

__all__ = ["KeySource", "KeyStatus", "find_key", "provider_secret_name"]

KeySource: TypeAlias = Literal["not_needed", "secret", "llm", "missing"]
"""Where a model's key came from: none needed, a datasette-secrets secret, llm, or nowhere."""


def provider_secret_name(needs_key: str) -> str:
    """Return the datasette-secrets name for a provider's key, e.g. ``OPENAI_API_KEY``."""
    return f"{needs_key.upper()}_API_KEY"


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """Where the key for a model comes from. The key itself is never part of it.

    Attributes:
        source: ``"not_needed"``, ``"secret"``, ``"llm"`` or ``"missing"``.
        secret_name: The datasette-secrets secret the key came from, when ``source`` is
            ``"secret"``; the provider secret that could hold it when ``"missing"``.
    """

    source: KeySource
    secret_name: str | None = None

    @property
    def available(self) -> bool:
        """Whether the model can be called: it needs no key or one was found."""
        return self.source != "missing"


def _actor_id(actor: Actor | None) -> str | None:
    if actor is None:
        return None
    actor_id = actor.get("id")
    return None if actor_id is None else str(actor_id)


async def find_key(
    datasette: Datasette,
    config: LLMConfig,
    model: AsyncModel,
    purpose: str | None,
    actor: Actor | None,
) -> tuple[str | None, KeyStatus]:
    """Return ``(key, status)`` for ``model`` used for ``purpose`` by ``actor``.

    Order: the ``key`` secrets configured on the purpose's and ``default_model``'s references to
    this model, then the provider secret ``<NEEDS_KEY>_API_KEY``, then ``llm.get_key``.
    """
    needs_key = getattr(model, "needs_key", None)
    if not needs_key:
        return None, KeyStatus("not_needed")
    from datasette_secrets import get_secret

    actor_id = _actor_id(actor)
    for ref in config.refs_for(model.model_id, purpose):
        if ref.key:
            key = await get_secret(datasette, ref.key, actor_id)
            if key:
                return key, KeyStatus("secret", ref.key)
    provider_secret = provider_secret_name(needs_key)
    key = await get_secret(datasette, provider_secret, actor_id)
    if key:
        return key, KeyStatus("secret", provider_secret)
    import llm

    key = llm.get_key(key_alias=needs_key, env_var=getattr(model, "key_env_var", None))
    if key:
        return key, KeyStatus("llm")
    configured = config.key_secret_for(model.model_id, purpose)
    return None, KeyStatus("missing", configured or provider_secret)
