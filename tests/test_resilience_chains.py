"""A chain that fails at a later step, after its tools ran, goes on from that step on a fallback.

The models are registered here through llm's ``register_models``: one asks for a tool and then
fails (as a provider would, with a 5xx), the other answers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import llm
import pytest

from datasette_llm import LLM, ProviderError
from tests.conftest import MakeDatasette
from tests.llm_models import SyncStub

TOOL_RUNS: list[str] = []
SEEN_BY_BACKUP: list[list[str]] = []
FAILING_SAW: list[list[str]] = []


def lookup(query: str) -> str:
    """Look something up."""
    TOOL_RUNS.append(query)
    return f"found {query}"


class AsksThenFails(llm.AsyncModel):
    model_id = "test-asks-then-fails"
    supports_tools = True
    can_stream = True

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        parts = [type(part).__name__ for message in prompt.messages for part in message.parts]
        FAILING_SAW.append(parts)
        if not any("ToolResult" in name for name in parts):
            response.add_tool_call(llm.ToolCall(name="lookup", arguments={"query": "rows"}))
        else:
            raise ProviderError("server_error", self.model_id, "the provider broke at step 2")
        yield ""


class Answers(llm.AsyncModel):
    model_id = "test-answers"
    supports_tools = True
    can_stream = True

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        SEEN_BY_BACKUP.append(
            [type(part).__name__ for message in prompt.messages for part in message.parts]
        )
        yield "the answer"


class Models:
    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-asks-then-fails"), AsksThenFails())
        register(SyncStub("test-answers"), Answers())


@pytest.fixture(autouse=True)
def models() -> Iterator[None]:
    TOOL_RUNS.clear()
    SEEN_BY_BACKUP.clear()
    llm.plugins.pm.register(Models(), name="chain-models")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="chain-models")


CONFIG = {
    "purposes": {
        "agent": {"model": "test-asks-then-fails", "fallbacks": ["test-answers"], "retries": 0}
    }
}


@pytest.mark.parametrize("way", ["async for", "text"])
async def test_a_later_step_failing_before_any_text_goes_on_from_that_step_on_the_fallback(
    make_datasette: MakeDatasette, way: str
) -> None:
    model = await LLM(make_datasette(CONFIG)).model(purpose="agent")
    chain = model.chain("count the rows", tools=[lookup])
    if way == "text":
        text = await chain.text()
    else:
        text = "".join([chunk async for chunk in chain])
    assert text == "the answer"
    assert TOOL_RUNS == ["rows"]  # the tool ran once: the fallback got its result in messages
    [parts] = SEEN_BY_BACKUP
    assert "ToolResultPart" in parts or any("Tool" in name for name in parts), parts
    steps = [response.model.model_id for response in chain.result.responses]
    assert steps == ["test-asks-then-fails", "test-answers"]
    assert [(a.model_id, a.error) for a in chain.result.attempts] == [
        ("test-asks-then-fails", "server_error"),
        ("test-answers", None),
    ]


async def test_a_later_step_failing_with_no_fallback_raises_the_provider_error(
    make_datasette: MakeDatasette,
) -> None:
    config = {"purposes": {"agent": {"model": "test-asks-then-fails"}}}
    model = await LLM(make_datasette(config)).model(purpose="agent")
    with pytest.raises(ProviderError) as raised:
        await model.chain("count the rows", tools=[lookup]).text()
    assert raised.value.kind == "server_error"
    assert TOOL_RUNS == ["rows"]
