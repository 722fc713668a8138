"""Every prompt enters the ``llm_prompt_context`` context managers exactly like ``async with``.

Each scripted context manager below is run around a prompt made every way a plugin can make one
(a factory that is a function or a bound method, beside another hook, in a group, under the
``FakeModelRouter``) and through plain ``contextlib`` around the raw llm model: the outcomes
must be the same, so the fake router's prompts take the path production's take.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import llm
import pytest

from datasette_llm import LLM, PromptResult
from datasette_llm.testing import FakeModelRouter
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")

Factory = Callable[[PromptResult], AbstractAsyncContextManager[object]]

MODES: Final = (
    "plain",
    "refuse-before-yield",
    "never-yield",
    "suppress",
    "replace",
    "yield-twice",
    "fail-in-cleanup",
)
PATHS: Final = ("function", "bound-method", "two-hooks", "group", "fake-router")
MODELS: Final = ("test-a", "test-fails")


class Refused(Exception):
    pass


@dataclass
class Script:
    """A context manager body scripted by ``mode``, recording what happens to it."""

    mode: str
    events: list[str] = field(default_factory=list)

    async def run(self, result: PromptResult) -> AsyncIterator[None]:
        self.events.append("enter")
        if self.mode == "refuse-before-yield":
            raise Refused("refused before the prompt")
        if self.mode == "never-yield":
            return
        try:
            yield
        except BaseException as error:
            self.events.append(f"thrown {type(error).__name__}: {error}")
            if self.mode == "suppress":
                return
            if self.mode == "replace":
                raise Refused("replaced the prompt's error") from error
            raise
        finally:
            self.events.append("finally")
        if self.mode == "yield-twice":
            yield
        if self.mode == "fail-in-cleanup":
            raise Refused("failed in cleanup")
        self.events.append("exit")

    # The same body as a method: a factory that is a bound method, not a plain function.
    around = asynccontextmanager(run)


@dataclass
class Outcome:
    error: str
    cause: str
    events: list[str]


def outcome(script: Script, error: BaseException | None) -> Outcome:
    if error is None:
        return Outcome("", "", script.events)
    cause = error.__cause__
    return Outcome(
        f"{type(error).__name__}: {error}",
        f"{type(cause).__name__}: {cause}" if cause else "",
        script.events,
    )


async def through_contextlib(mode: str, model_id: str) -> Outcome:
    """The reference: plain ``async with`` around the raw llm model."""
    script = Script(mode)
    try:
        async with asynccontextmanager(script.run)(None):  # type: ignore[arg-type]
            await llm.get_async_model(model_id).prompt("hi")
    except Exception as error:
        return outcome(script, error)
    return outcome(script, None)


class ScriptPlugin:
    def __init__(self, script: Script, bound_method: bool) -> None:
        self.script = script
        self.bound_method = bound_method

    @hookimpl
    def llm_prompt_context(self) -> Factory:
        if self.bound_method:
            return self.script.around
        return asynccontextmanager(self.script.run)


class Bystander:
    @hookimpl
    def llm_prompt_context(self) -> Factory:
        @asynccontextmanager
        async def nothing(result: PromptResult) -> AsyncIterator[None]:
            yield

        return nothing


async def through_datasette_llm(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    mode: str,
    model_id: str,
    path: str,
) -> Outcome:
    script = Script(mode)
    register_plugin(ScriptPlugin(script, bound_method=path == "bound-method"), name="script")
    if path == "two-hooks":
        register_plugin(Bystander(), name="bystander")
    llm_ = LLM(make_datasette())
    router = FakeModelRouter(assert_all_replies_used=False)
    if path == "fake-router":
        router.start()
        if model_id == "test-fails":
            router.add_exception(RuntimeError("the provider failed mid-stream"))
    try:
        if path == "group":
            async with llm_.group(model_id) as grouped:
                await grouped.prompt("hi")
        else:
            await (await llm_.model(model_id)).prompt("hi")
    except Exception as error:
        return outcome(script, error)
    finally:
        router.stop()
    return outcome(script, None)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("mode", MODES)
async def test_every_path_enters_the_hook_like_async_with(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    mode: str,
    model_id: str,
    path: str,
) -> None:
    expected = await through_contextlib(mode, model_id)
    if expected.error == "" and mode == "suppress" and model_id == "test-fails":
        # async with would carry on with no response; prompt() has none to return.
        expected.error = (
            "RuntimeError: An llm_prompt_context context manager suppressed the error the prompt "
            "raised, so there is no response to return. Let the error propagate out of the "
            "context manager (re-raise it after handling it)."
        )
    got = await through_datasette_llm(make_datasette, register_plugin, mode, model_id, path)
    assert got == expected
