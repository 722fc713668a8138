"""Faults: failing hooks, failing responses and cancelled tasks keep the documented outcome.

For every fault: hooks that were entered are exited, ``llm_group_exit`` runs exactly once, no
response is left unfinished, the original exception reaches the caller, and nothing is
swallowed without a log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import llm
import pytest

from datasette_llm import LLM, Group, PromptResult
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import SyncStub

pytestmark = pytest.mark.usefixtures("test_models")

GATED: Final = "test-gated"


class Gate:
    """Shared state of the gated model: prompts containing ``wait`` block until released."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.started = 0
        self.closed = 0


class GatedModel(llm.AsyncModel):
    """Yields ``first ``; then fails (prompt has ``fail``) or waits for the gate (``wait``)."""

    can_stream = True
    model_id = GATED

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        text = prompt.prompt or ""
        self.gate.started += 1
        try:
            yield "first "
            if "fail" in text:
                raise RuntimeError("the gated model failed mid-stream")
            if "wait" in text:
                self.gate.waiting.set()
                await self.gate.release.wait()
            yield "last"
        finally:
            self.gate.closed += 1


class GatedModelPlugin:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub(GATED), GatedModel(self.gate))


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    llm.plugins.pm.register(GatedModelPlugin(gate), name="datasette-llm-test-gated")
    try:
        yield gate
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-gated")


class Refused(Exception):
    """What a budget plugin raises to refuse a prompt."""


class Recorder:
    """Record every context entered and exited, every finished response and every group exit.

    Attributes:
        events: ``("enter", label)`` and ``("exit", label, exception type name or None)``.
        done: Ids of responses whose ``on_response_done`` callback fired, in order.
        exits: ``(group, [done flag of each group response])`` per ``llm_group_exit`` call.
    """

    def __init__(self, label: str = "rec", before: bool = False, after: bool = False) -> None:
        self.label = label
        self.raise_before = before
        self.raise_after = after
        self.events: list[tuple[str, ...]] = []
        self.done: list[str] = []
        self.exits: list[tuple[Group, list[bool]]] = []

    @hookimpl
    def llm_prompt_context(
        self, prompt: str
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[object]]:
        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            self.events.append(("enter", self.label))

            async def record(response: llm.AsyncResponse) -> None:
                self.done.append(response.id)

            await result.on_response_done(record)
            if self.raise_before:
                raise Refused(f"{self.label} refused {prompt!r}")
            try:
                yield
            except BaseException as error:
                self.events.append(("exit", self.label, type(error).__name__))
                raise
            self.events.append(("exit", self.label, ""))
            if self.raise_after:
                raise Refused(f"{self.label} failed after {prompt!r}")

        return around

    @hookimpl
    def llm_group_exit(self, group: Group) -> None:
        self.exits.append((group, [response._done for response in group.responses]))


def recorder(register_plugin: RegisterPlugin, **kwargs: Any) -> Recorder:
    plugin = register_plugin(Recorder(**kwargs), name=kwargs.get("label", "rec"))
    assert isinstance(plugin, Recorder)
    return plugin


# ---------------------------------------------------------------------------------------------
# llm_prompt_context


async def test_hook_llm_prompt_context_raising_before_yield_reaches_the_caller_unchanged(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    recorder(register_plugin, label="budget", before=True)
    outer = recorder(register_plugin, label="outer")  # registered last: entered first
    model = await LLM(make_datasette()).model(GATED)
    with pytest.raises(Refused, match="budget refused 'hello'"):
        await model.prompt("hello")
    assert outer.events == [("enter", "outer"), ("exit", "outer", "Refused")]
    assert gate.started == 0, "a refused prompt never reaches the model"


async def test_hook_llm_prompt_context_raising_after_yield_reaches_the_caller_after_the_prompt(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    recorder(register_plugin, label="settle", after=True)
    outer = recorder(register_plugin, label="outer")  # registered last: entered first
    model = await LLM(make_datasette()).model(GATED)
    with pytest.raises(Refused, match="settle failed after 'hello'"):
        await model.prompt("hello")
    assert outer.events == [("enter", "outer"), ("exit", "outer", "Refused")]
    assert len(outer.done) == 1, "the response completed before the hook failed"
    assert gate.started == gate.closed == 1


async def test_hook_llm_prompt_context_raising_in_a_group_still_runs_group_exit_once(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    recorder(register_plugin, label="budget", before=True)
    outer = recorder(register_plugin, label="outer")  # registered last: entered first
    with pytest.raises(Refused):
        async with LLM(make_datasette()).group(GATED) as model:
            await model.prompt("hello")
    assert len(outer.exits) == 1
    assert outer.events[-1] == ("exit", "outer", "Refused")


async def test_hook_llm_prompt_context_raising_ends_a_chain_with_the_hook_error(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    recorder(register_plugin, label="budget", before=True)
    outer = recorder(register_plugin, label="outer")  # registered last: entered first
    model = await LLM(make_datasette()).model(GATED)
    with pytest.raises(Refused):
        await model.chain("hello").text()
    assert outer.events == [("enter", "outer"), ("exit", "outer", "Refused")]
    assert gate.started == 0


# ---------------------------------------------------------------------------------------------
# llm_filter_models


async def test_hook_llm_filter_models_raising_reaches_the_caller_of_models(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    class Broken:
        @hookimpl
        def llm_filter_models(self, models: list[Any]) -> list[Any]:
            raise Refused("filter is down")

    register_plugin(Broken(), name="broken")
    with pytest.raises(Refused, match="filter is down"):
        await LLM(make_datasette()).models()


async def test_hook_llm_filter_models_raising_asynchronously_reaches_the_caller_of_models(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    class Broken:
        @hookimpl
        def llm_filter_models(self, models: list[Any]) -> Any:
            async def inner() -> list[Any]:
                raise Refused("filter is down")

            return inner()

    register_plugin(Broken(), name="broken")
    with pytest.raises(Refused, match="filter is down"):
        await LLM(make_datasette()).models()


# ---------------------------------------------------------------------------------------------
# llm_group_exit


class FailingExit:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def llm_group_exit(self, group: Group) -> None:
        self.calls += 1
        raise RuntimeError("settlement failed")


async def test_hook_llm_group_exit_raising_runs_every_exit_once_and_reaches_the_caller(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = recorder(register_plugin)
    failing = register_plugin(FailingExit(), name="failing-exit")
    assert isinstance(failing, FailingExit)
    with pytest.raises(RuntimeError, match="settlement failed"):
        async with LLM(make_datasette()).group("test-a") as model:
            await model.prompt("x")
    assert failing.calls == 1 and len(rec.exits) == 1
    assert "llm_group_exit in plugin 'failing-exit' raised" in caplog.text


async def test_hook_llm_group_exit_raising_does_not_hide_the_exception_of_the_block(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = recorder(register_plugin)
    failing = register_plugin(FailingExit(), name="failing-exit")
    assert isinstance(failing, FailingExit)
    with pytest.raises(ZeroDivisionError):
        async with LLM(make_datasette()).group("test-a") as model:
            await model.prompt("x")
            _ = 1 / 0
    assert failing.calls == 1 and len(rec.exits) == 1
    assert "llm_group_exit in plugin 'failing-exit' raised" in caplog.text


# ---------------------------------------------------------------------------------------------
# A response failing mid-stream


async def test_a_response_failing_mid_stream_reaches_the_caller_and_exits_the_hooks(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    rec = recorder(register_plugin)
    model = await LLM(make_datasette()).model("test-fails")
    with pytest.raises(RuntimeError, match="the provider failed mid-stream"):
        await model.prompt("x")
    assert rec.events == [("enter", "rec"), ("exit", "rec", "RuntimeError")]
    assert rec.done == [], "a failed response is not reported as done"


async def test_a_response_failing_mid_stream_in_a_group_reaches_the_caller_after_group_exit(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    rec = recorder(register_plugin)
    with pytest.raises(RuntimeError, match="the provider failed mid-stream"):
        async with LLM(make_datasette()).group("test-fails") as model:
            await model.prompt("x")
    assert len(rec.exits) == 1
    assert rec.events[-1] == ("exit", "rec", "RuntimeError")


async def test_a_chain_failing_mid_stream_in_a_group_is_logged_when_finished_on_exit(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = recorder(register_plugin)
    async with LLM(make_datasette()).group("test-fails") as model:
        async for _chunk in model.chain("x"):
            break  # leave it after its first chunk: the group finishes it, and it fails
    assert len(rec.exits) == 1
    assert "failed while being finished" in caplog.text
    assert "the provider failed mid-stream" in caplog.text


async def test_a_failing_prompt_among_concurrent_prompts_in_a_group_exits_after_all_finish(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    rec = recorder(register_plugin)

    async def release_later() -> None:
        await gate.waiting.wait()
        await asyncio.sleep(0.01)
        gate.release.set()

    releaser = asyncio.ensure_future(release_later())
    with pytest.raises(RuntimeError, match="gated model failed"):
        async with LLM(make_datasette()).group(GATED) as model:
            await asyncio.gather(model.prompt("wait"), model.prompt("fail"))
    await releaser
    [(_group, done)] = rec.exits
    assert gate.started == gate.closed == 2
    assert sorted(event[-1] for event in rec.events if event[0] == "exit") == ["", "RuntimeError"]
    assert len(rec.done) == 1 and done == [True], "group exit saw the slow prompt finish"


# ---------------------------------------------------------------------------------------------
# Cancellation


async def wait_then_cancel(task: asyncio.Task[Any], gate: Gate) -> None:
    await asyncio.wait_for(gate.waiting.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_cancelled_mid_prompt_exits_the_hooks_and_closes_the_response(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    rec = recorder(register_plugin)
    model = await LLM(make_datasette()).model(GATED)
    task = asyncio.ensure_future(model.prompt("wait"))
    await wait_then_cancel(task, gate)
    assert rec.events == [("enter", "rec"), ("exit", "rec", "CancelledError")]
    assert gate.closed == gate.started == 1, "the cancelled response's stream was closed"


async def test_a_task_cancelled_mid_group_runs_group_exit_once_and_propagates(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    rec = recorder(register_plugin)
    datasette = make_datasette()

    async def body() -> None:
        async with LLM(datasette).group(GATED) as model:
            await model.prompt("first")
            await model.prompt("wait")

    await wait_then_cancel(asyncio.ensure_future(body()), gate)
    [(_group, done)] = rec.exits
    assert done == [True]
    assert rec.events[-1] == ("exit", "rec", "CancelledError")
    assert gate.closed == gate.started == 2


async def test_a_task_cancelled_while_the_group_finishes_responses_still_runs_group_exit(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, gate: Gate
) -> None:
    rec = recorder(register_plugin)
    datasette = make_datasette()

    async def body() -> None:
        async with LLM(datasette).group(GATED) as model:
            async for _chunk in model.chain("wait"):
                break  # the group finishes it on exit, and it waits for the gate

    await wait_then_cancel(asyncio.ensure_future(body()), gate)
    assert len(rec.exits) == 1
