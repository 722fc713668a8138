"""``LLM``: the entry point a plugin uses to get a model by purpose, a list of models, or a group.

``LLM.group()`` is a block whose prompts form one ``Group``, every response finished before
``llm_group_exit`` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Container
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import llm

from ..config.values import LLMConfig
from ..coordination import overrides_current
from ..errors import ModelNotFoundError
from ..log import logger
from ..routing.models import current_registry
from ..routing.overlay import config_for
from ..routing.permissions import check_use
from ..routing.policy import policy_for, screen
from ..routing.purposes import Purpose, purpose_name
from ..routing.requirements import Requirements
from ..routing.route import requirements_for, route
from ..usage.ledger import ledger_for, read_records
from .hooks import call_llm_group_exit
from .results import Group
from .send import Target
from .wrapped import WrappedAsyncModel, wrap

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..actors import Actor
    from ..routing.route import Resolution, Routed
    from ..usage.ledger import Listener
    from ..usage.records import UsageRecord

__all__ = ["LLM", "open_group"]


# Groups.


@asynccontextmanager
async def open_group(
    datasette: Datasette, routed: Routed, actor: Actor | None
) -> AsyncIterator[WrappedAsyncModel]:
    """Yield a model whose prompts form one ``Group``; finish them all, then ``llm_group_exit``.

    On exit, also after an exception in the block: the tasks that started prompts of the group
    are awaited; chains the block left unfinished end (their hooks see the block's exception,
    or ``GeneratorExit``); every response is driven to completion (one a chain left part way
    is read to its end at once, holding its place under the model's limits until then); then
    ``llm_group_exit`` runs once. The model refuses prompts after that. The block's own
    exception wins over a failing ``llm_group_exit`` (which is logged).
    """
    resolution = routed.resolution
    target = Target(datasette, routed, actor, Group(resolution.model_id, resolution.purpose, actor))
    try:
        yield WrappedAsyncModel(target)
    except BaseException as error:
        await _end_group(target, error)
        raise
    await _end_group(target, None)


async def _end_group(target: Target, block_error: BaseException | None) -> None:
    group = target.group
    assert group is not None
    try:
        await _wait_for_tasks(target)
        for chain in list(target.open_chains):
            await chain.abandon(block_error)
        # The responses chains left part way, read to their end meanwhile, then the others.
        finishing = target.finishing
        ended = dict(zip(finishing, await asyncio.gather(*finishing.values()), strict=True))
        errors = [error for error in ended.values() if error is not None]
        errors += await _finish(group, skip=ended)
    except BaseException:
        await _group_exit(target, group, quiet=True)
        raise
    for error in errors:
        logger.warning(
            "A response in group (model %r, purpose %r) failed while being finished: %r",
            group.model_id,
            group.purpose,
            error,
        )
    await _group_exit(target, group, quiet=block_error is not None)


async def _wait_for_tasks(target: Target) -> None:
    """Wait until every other task that started a prompt of the group has finished.

    Tasks created in the block (``asyncio.create_task(model.prompt(...))``) start on the next
    turn of the event loop: give them that turn, so their prompts are counted too.
    """
    own = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        pending = [task for task in target.tasks if task is not own and not task.done()]
        if not pending:
            return
        await asyncio.wait(pending)


async def _finish(group: Group, skip: Container[object] = ()) -> list[Exception]:
    """Drive every response of the group but those in ``skip`` (read to their end already)
    to completion; return the errors raised on the way."""
    errors: list[Exception] = []
    for response in group.responses:
        if response in skip:
            continue
        try:
            await response.text()
        except Exception as error:
            errors.append(error)
    return errors


async def _group_exit(target: Target, group: Group, quiet: bool) -> None:
    target.ended = True
    try:
        await call_llm_group_exit(target.datasette, group)
    except Exception:
        if not quiet:
            raise
        # Logged by call_llm_group_exit; the exception already on its way out wins.


# The client.


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
        requires: Requirements | None = None,
    ) -> Resolution:
        """Return which model a call would use and why, without creating it.

        Raises:
            ModelBlockedError: The explicit ``model_id`` is blocked for this purpose.
            ModelNotFoundError: Nothing was given or configured, or every candidate was refused.
            llm.UnknownModelError: The chosen model is not installed.
            PurposeNotAllowedError: ``actor`` may not use the purpose (``llm-use``).
        """
        config = self.config  # a configuration error comes first
        if config.coordination is not None and await overrides_current(self._datasette):
            config = self.config  # another process's override, read just now
        await check_use(self._datasette, actor, purpose_name(purpose))
        routed = await route(
            self._datasette,
            config,
            model_id,
            purpose,
            actor,
            read_key=False,
            requires=requires,
        )
        return routed.resolution

    async def model(
        self,
        model_id: str | None = None,
        purpose: str | Purpose | None = None,
        actor: Actor | None = None,
        requires: Requirements | None = None,
    ) -> WrappedAsyncModel:
        """Return the model for ``purpose`` (or ``model_id``), wrapped so prompts run the hooks.

        An explicit ``model_id`` is used as given, unless it is blocked: allowlists and
        requirements apply only to routing and to its fallbacks. ``requires`` adds to what the
        purpose requires (``Purpose.requires``, also for a purpose given by name): routing and
        fallbacks skip models that lack either.

        Raises:
            ModelBlockedError: The explicit ``model_id`` is blocked for this purpose.
            ModelNotFoundError: Nothing was given or configured, or every candidate was refused.
            llm.UnknownModelError: The chosen model is not installed.
            PurposeNotAllowedError: ``actor`` may not use the purpose (``llm-use``); a call
                without an actor is not checked.
        """
        config = self.config  # a configuration error comes first
        if config.coordination is not None and await overrides_current(self._datasette):
            config = self.config  # another process's override, read just now
        await check_use(self._datasette, actor, purpose_name(purpose))
        routed = await route(
            self._datasette, config, model_id, purpose, actor, read_key=True, requires=requires
        )
        return wrap(self._datasette, routed, actor)

    @asynccontextmanager
    async def group(
        self,
        model_id: str | None = None,
        purpose: str | Purpose | None = None,
        actor: Actor | None = None,
        requires: Requirements | None = None,
    ) -> AsyncIterator[WrappedAsyncModel]:
        """Yield a model whose prompts form one ``Group``; finish them all on exit.

        On exit, also after an exception in the block, every response is driven to completion,
        then ``llm_group_exit`` runs once with the same ``Group`` the prompts saw.

        Raises:
            PurposeNotAllowedError: ``actor`` may not use the purpose (``llm-use``).
        """
        config = self.config  # a configuration error comes first
        if config.coordination is not None and await overrides_current(self._datasette):
            config = self.config  # another process's override, read just now
        await check_use(self._datasette, actor, purpose_name(purpose))
        routed = await route(
            self._datasette, config, model_id, purpose, actor, read_key=True, requires=requires
        )
        async with open_group(self._datasette, routed, actor) as model:
            yield model

    async def models(
        self,
        actor: Actor | None = None,
        purpose: str | Purpose | None = None,
        requires: Requirements | None = None,
    ) -> list[AsyncModel]:
        """Return the models ``actor`` may use for ``purpose``, the routed default first.

        Every installed model is checked against the policy (blocklists, the allowlist, what
        the purpose and ``requires`` require, keys under ``require_keys``, every
        ``llm_filter_models`` hook); then ordered: the model routing picks, the purpose's
        ``models``, the global ``models``, then llm's registry order.

        Raises:
            PurposeNotAllowedError: ``actor`` may not use the purpose (``llm-use``).
        """
        name = purpose_name(purpose)
        config = self.config  # a configuration error comes first
        await check_use(self._datasette, actor, name)
        registry = current_registry(self._datasette)
        policy = policy_for(self._datasette, config, name, registry)
        needs = requirements_for(self._datasette, purpose, requires)
        screening = await screen(
            self._datasette,
            policy,
            registry.models,
            actor,
            require_keys=config.require_keys,
            requires=needs,
        )
        try:
            routed = await route(
                self._datasette,
                config,
                None,
                purpose,
                actor,
                read_key=False,
                registry=registry,
                requires=requires,
            )
        except (ModelNotFoundError, llm.UnknownModelError):
            first: list[str] = []
        else:
            first = [routed.resolution.model_id]
        by_id = {model.model_id: model for model in screening.models}
        order = dict.fromkeys([*first, *policy.preferred(), *by_id])
        return [by_id[model_id] for model_id in order if model_id in by_id]

    def on_usage(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(record)`` with the ``UsageRecord`` of every attempt from now on.

        It is called as each record is made, before the ledger writes it, in the task that
        made the prompt: keep it quick (a usage or accountant plugin may total what it needs).
        Returns a function that stops the calls.
        """
        return ledger_for(self._datasette).listen(listener)

    async def usage_records(
        self, since: float | None = None, purpose: str | Purpose | None = None
    ) -> list[UsageRecord]:
        """Return the ledger's records, oldest first: those since ``since`` (epoch seconds),
        of ``purpose`` if given. Waits for the records not yet written."""
        ledger = ledger_for(self._datasette)
        await ledger.flush()
        return await read_records(ledger, since, purpose_name(purpose))
