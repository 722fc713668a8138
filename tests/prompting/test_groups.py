"""``LLM.group()``: one Group for a batch, every response finished, ``llm_group_exit`` once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from datasette_llm import LLM, Actor, Group, PromptResult
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")


class Watcher:
    def __init__(self, returns_coroutine: bool = False) -> None:
        self.returns_coroutine = returns_coroutine
        self.groups_seen_by_prompts: list[Group | None] = []
        self.exits: list[tuple[Group, list[bool]]] = []

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[object]]:
        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            self.groups_seen_by_prompts.append(result.group)
            yield

        return around

    @hookimpl
    def llm_group_exit(self, group: Group) -> Any:
        def record() -> None:
            self.exits.append((group, [r._done for r in group.responses]))

        if self.returns_coroutine:

            async def later() -> None:
                record()

            return later()
        record()
        return None


async def test_group_yields_a_model_whose_prompts_share_one_group(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    watcher = register_plugin(Watcher(), name="watcher")
    assert isinstance(watcher, Watcher)
    actor = {"id": "ann"}
    datasette = make_datasette({"purposes": {"batch": {"model": "test-a"}}})
    async with LLM(datasette).group(purpose="batch", actor=actor) as model:
        assert model.model_id == "test-a" and model.purpose == "batch"
        for row in ("r1", "r2", "r3"):
            await model.prompt(row)
    [group, done] = watcher.exits[0]
    assert len(watcher.exits) == 1
    assert all(seen is group for seen in watcher.groups_seen_by_prompts)
    assert len(watcher.groups_seen_by_prompts) == 3
    assert (group.model_id, group.purpose, group.actor) == ("test-a", "batch", actor)
    assert done == [True, True, True]


async def test_hook_llm_group_exit_coroutine_is_awaited(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    watcher = register_plugin(Watcher(returns_coroutine=True), name="watcher")
    assert isinstance(watcher, Watcher)
    async with LLM(make_datasette()).group("test-a") as model:
        await model.prompt("x")
    assert len(watcher.exits) == 1


async def test_group_exit_runs_after_an_exception_in_the_body_which_propagates(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    watcher = register_plugin(Watcher(), name="watcher")
    assert isinstance(watcher, Watcher)
    with pytest.raises(ZeroDivisionError):
        async with LLM(make_datasette()).group("test-a") as model:
            await model.prompt("x")
            _ = 1 / 0
    assert len(watcher.exits) == 1


async def test_group_drives_unfinished_chain_responses_to_completion(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    watcher = register_plugin(Watcher(), name="watcher")
    assert isinstance(watcher, Watcher)
    async with LLM(make_datasette()).group("test-a") as model:
        chain = model.chain("x")
        async for _response in chain.responses():
            break  # leave the response unread
    [(_group, done)] = watcher.exits
    assert done == [True]


async def test_group_applies_configured_options(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette(
        {"purposes": {"batch": {"model": {"model": "test-a", "options": {"style": "terse"}}}}}
    )
    async with LLM(datasette).group(purpose="batch") as model:
        text = await (await model.prompt("x")).text()
    assert "options=[('style', 'terse')]" in text


async def test_group_exit_failure_is_raised_after_every_exit_hook_ran(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    class Fails:
        @hookimpl
        def llm_group_exit(self, group: Group) -> None:
            raise RuntimeError("settlement failed")

    watcher = register_plugin(Watcher(), name="watcher")
    assert isinstance(watcher, Watcher)
    register_plugin(Fails(), name="fails")
    with pytest.raises(RuntimeError, match="settlement failed"):
        async with LLM(make_datasette()).group("test-a") as model:
            await model.prompt("x")
    assert len(watcher.exits) == 1
    assert "llm_group_exit in plugin 'fails' raised" in caplog.text


async def test_group_conversation_prompts_belong_to_the_group(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    watcher = register_plugin(Watcher(), name="watcher")
    assert isinstance(watcher, Watcher)
    async with LLM(make_datasette()).group("test-a") as model:
        conversation = model.conversation()
        await conversation.prompt("one")
        await conversation.prompt("two")
    [(group, done)] = watcher.exits
    assert done == [True, True]
    assert watcher.groups_seen_by_prompts == [group, group]
