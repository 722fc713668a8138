"""``LLM.group()``: a block whose prompts form one ``Group``, finished before ``llm_group_exit``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._hooks import call_llm_group_exit
from .log import logger
from .results import Group
from .targets import Target
from .wrapped import WrappedAsyncModel

if TYPE_CHECKING:
    from datasette.app import Datasette

    from .actors import Actor
    from .routing import Routed

__all__ = ["open_group"]


@asynccontextmanager
async def open_group(
    datasette: Datasette, routed: Routed, actor: Actor | None
) -> AsyncIterator[WrappedAsyncModel]:
    """Yield a model whose prompts form one ``Group``; finish them all, then ``llm_group_exit``.

    On exit, also after an exception in the block: the tasks that started prompts of the group
    are awaited; chains the block left unfinished end (their hooks see the block's exception,
    or ``GeneratorExit``); every response is driven to completion; then ``llm_group_exit`` runs
    once. The model refuses prompts after that. The block's own exception wins over a failing
    ``llm_group_exit`` (which is logged).
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
        errors = await _finish(group)
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


async def _finish(group: Group) -> list[Exception]:
    """Drive every response of the group to completion; return the errors raised on the way."""
    errors: list[Exception] = []
    for response in group.responses:
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
