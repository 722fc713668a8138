"""``LLM``: the entry point a plugin uses to get a model by purpose."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .config import LLMConfig, config_for
from .errors import ModelNotFoundError
from .hooks import call_llm_filter_models, call_llm_group_exit
from .keys import find_key
from .purposes import Purpose, purpose_name
from .registry import canonical_ids, current_registry
from .resolver import Resolution, resolve
from .results import Group
from .wrapped import WrappedAsyncModel, _Context, finish_responses

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from .types import Actor

__all__ = ["LLM"]

logger = logging.getLogger("datasette_llm")


class LLM:
    """Get models by purpose, routed by the operator's configuration and plugins' hooks.

    Create one per call; it is cheap::

        model = await LLM(datasette).model(purpose=ENRICHMENTS)
        response = await model.prompt("Summarize this row")
    """

    __slots__ = ("_datasette",)

    def __init__(self, datasette: Datasette) -> None:
        self._datasette = datasette

    def __repr__(self) -> str:
        return f"<LLM datasette={id(self._datasette):#x}>"

    @property
    def config(self) -> LLMConfig:
        """The parsed ``datasette-llm`` configuration."""
        return config_for(self._datasette)

    async def resolve(
        self,
        model_id: str | None = None,
        purpose: str | Purpose | None = None,
        actor: Actor | None = None,
    ) -> Resolution:
        """Return which model a call would use and why, without creating it.

        Raises:
            ModelNotFoundError: Nothing was given or configured, or every candidate was refused.
            llm.UnknownModelError: The chosen model is not installed.
        """
        resolution, _, _ = await resolve(
            self._datasette, self.config, model_id, purpose_name_or_object(purpose), actor
        )
        return resolution

    async def model(
        self,
        model_id: str | None = None,
        purpose: str | Purpose | None = None,
        actor: Actor | None = None,
    ) -> WrappedAsyncModel:
        """Return the model for ``purpose`` (or ``model_id``), wrapped so prompts run the hooks.

        An explicit ``model_id`` is used as given (allow and block lists apply only to routing).

        Raises:
            ModelNotFoundError: Nothing was given or configured, or every candidate was refused.
            llm.UnknownModelError: The chosen model is not installed.
        """
        return await self._wrapped(model_id, purpose, actor, group=False)

    @asynccontextmanager
    async def group(
        self,
        model_id: str | None = None,
        purpose: str | Purpose | None = None,
        actor: Actor | None = None,
    ) -> AsyncIterator[WrappedAsyncModel]:
        """Yield a model whose prompts form one ``Group``; finish them all on exit.

        On exit, also after an exception in the block, every response is driven to completion,
        then ``llm_group_exit`` runs once with the same ``Group`` the prompts saw.
        """
        wrapped = await self._wrapped(model_id, purpose, actor, group=True)
        try:
            yield wrapped
        except BaseException:
            await self._end_group(wrapped, block_failed=True)
            raise
        await self._end_group(wrapped, block_failed=False)

    async def _end_group(self, wrapped: WrappedAsyncModel, block_failed: bool) -> None:
        """Finish the group's responses, then run ``llm_group_exit`` exactly once.

        ``llm_group_exit`` runs even if finishing is cancelled. When the block failed, its
        exception wins over a failing ``llm_group_exit`` (which ``call_llm_group_exit`` logs).
        """
        group = wrapped.group
        assert group is not None
        try:
            # Prompts started in other tasks (asyncio.gather) may still be running.
            await wrapped._context.wait_in_flight()
            errors = await finish_responses(group._responses)
        except BaseException:
            await self._group_exit(group, quiet=True)
            raise
        for error in errors:
            logger.warning(
                "A response in group (model %r, purpose %r) failed while being finished: %r",
                group.model_id,
                group.purpose,
                error,
            )
        await self._group_exit(group, quiet=block_failed)

    async def _group_exit(self, group: Group, quiet: bool) -> None:
        try:
            await call_llm_group_exit(self._datasette, group)
        except Exception:
            if not quiet:
                raise
            # Logged by call_llm_group_exit; the exception already on its way out wins.

    async def models(
        self, actor: Actor | None = None, purpose: str | Purpose | None = None
    ) -> list[AsyncModel]:
        """Return the models ``actor`` may use for ``purpose``, the resolved default first.

        Applies ``require_keys``, the allowlist, the blocklists and every ``llm_filter_models``
        hook in turn; then orders: resolved default, the purpose's ``models``, the global
        ``models``, then the rest in llm's registry order.
        """
        name = purpose_name(purpose)
        config = self.config
        registry = current_registry()
        candidates = list(registry.models)
        if config.require_keys:
            missing = await self._without_keys(registry.keyed, config, name, actor)
            if missing:
                candidates = [model for model in candidates if model.model_id not in missing]
        allowlist = config.allowlist(name)
        if allowlist is not None:
            allowlist = canonical_ids(allowlist)
        blocklist = canonical_ids(config.blocklist(name))
        if allowlist is not None or blocklist:
            candidates = [
                model
                for model in candidates
                if model.model_id not in blocklist
                and (allowlist is None or model.model_id in allowlist)
            ]
        candidates = await call_llm_filter_models(self._datasette, candidates, actor, name)
        try:
            default: str | None = (await self.resolve(None, purpose, actor)).model_id
        except (ModelNotFoundError, KeyError):  # KeyError: llm.UnknownModelError
            default = None
        return _ordered(candidates, config, name, default)

    async def _without_keys(
        self,
        keyed: tuple[AsyncModel, ...],
        config: LLMConfig,
        purpose: str | None,
        actor: Actor | None,
    ) -> set[str]:
        """Return the ids of the models in ``keyed`` that have no API key available."""
        has_key: dict[str, bool] = {}
        missing: set[str] = set()
        for model in keyed:
            needs_key = getattr(model, "needs_key", None)
            custom = config.key_secret_for(model.model_id, purpose) is not None
            cache_key = f"model:{model.model_id}" if custom else f"key:{needs_key}"
            if cache_key not in has_key:
                _, status = await find_key(self._datasette, config, model, purpose, actor)
                has_key[cache_key] = status.available
            if not has_key[cache_key]:
                missing.add(model.model_id)
        return missing

    async def _wrapped(
        self,
        model_id: str | None,
        purpose: str | Purpose | None,
        actor: Actor | None,
        group: bool,
    ) -> WrappedAsyncModel:
        config = self.config
        resolution, model, key = await resolve(
            self._datasette, config, model_id, purpose_name_or_object(purpose), actor
        )
        name = resolution.purpose
        context = _Context(
            datasette=self._datasette,
            model_id=model.model_id,
            purpose=name,
            actor=actor,
            key=key,
            options=config.options_for(resolution.model_id, name),
            group=Group(model.model_id, name, actor) if group else None,
            resolution=resolution,
        )
        return WrappedAsyncModel(model, context, resolution)


def purpose_name_or_object(purpose: str | Purpose | None) -> str | Purpose | None:
    """Check ``purpose`` is a string, a ``Purpose`` or ``None`` and return it."""
    purpose_name(purpose)
    return purpose


def _ordered(
    models: list[AsyncModel], config: LLMConfig, purpose: str | None, default: str | None
) -> list[AsyncModel]:
    by_id = {model.model_id: model for model in models}
    ordered: list[AsyncModel] = []

    def take(model_id: str) -> None:
        model = by_id.pop(model_id, None)
        if model is not None:
            ordered.append(model)

    if default is not None:
        take(default)
    purpose_config = config.purpose(purpose)
    if purpose_config is not None:
        for ref in purpose_config.models or ():
            take(ref.model_id)
    for model_id in config.models or ():
        take(model_id)
    ordered.extend(model for model in models if model.model_id in by_id)
    return ordered
