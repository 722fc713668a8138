"""Our hooks go through pluggy's public interface: wrappers wrap them, monitoring sees them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from datasette.plugins import pm
from llm import AsyncModel

from datasette_llm import LLM, Group, PromptResult, Purpose, get_purposes
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")


class Everything:
    """One implementation of each of our hooks."""

    @hookimpl
    def register_llm_purposes(self) -> list[Purpose]:
        return [Purpose("watched")]

    @hookimpl
    def llm_default_model(self) -> str:
        return "test-a"

    @hookimpl
    def llm_filter_models(self, models: list[AsyncModel]) -> list[AsyncModel]:
        return models

    @hookimpl
    def llm_prompt_context(self) -> Callable[[PromptResult], AbstractAsyncContextManager[None]]:
        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            yield

        return around

    @hookimpl
    def llm_group_exit(self, group: Group) -> None:
        return None


class Wrappers:
    """``wrapper=True`` implementations: each sees the call and may change its result."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def llm_default_model(self) -> Generator[None, list[object], list[object]]:
        answers = yield
        self.seen.append("llm_default_model")
        return ["test-c" if answer == "test-a" else answer for answer in answers]

    @hookimpl(wrapper=True)
    def llm_prompt_context(self, prompt: str) -> Generator[None, list[object], list[object]]:
        factories = yield
        self.seen.append(f"llm_prompt_context({prompt})")
        return factories


async def test_a_wrapper_true_implementation_of_our_hooks_runs_and_may_change_the_answer(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    register_plugin(Everything(), name="everything")
    wrappers = register_plugin(Wrappers(), name="wrappers")
    assert isinstance(wrappers, Wrappers)
    model = await LLM(make_datasette()).model(purpose="watched")
    await model.prompt("hello")
    assert model.model_id == "test-c", "the wrapper replaced the hook's answer"
    assert (model.resolution.step, model.resolution.chosen_by) == ("hook", "everything")
    assert wrappers.seen == ["llm_default_model", "llm_prompt_context(hello)"]


async def test_pluggys_hook_call_monitoring_sees_every_one_of_our_hook_calls(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    register_plugin(Everything(), name="everything")
    called: list[str] = []

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        if "llm" in hook_name:
            called.append(hook_name)

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        pass

    undo = pm.add_hookcall_monitoring(before, after)
    try:
        datasette = make_datasette()
        assert [purpose.name for purpose in get_purposes(datasette)] == ["watched"]
        async with LLM(datasette).group(purpose="watched") as model:
            await model.prompt("hello")
    finally:
        undo()
    assert called == [
        "register_llm_purposes",
        "llm_default_model",
        "llm_filter_models",
        "llm_prompt_context",
        "llm_group_exit",
    ]
