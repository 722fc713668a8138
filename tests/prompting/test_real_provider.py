"""llm's own OpenAI plugin against a local OpenAI-compatible provider (``tests/openai_server.py``).

The key travels as llm sends it, in the ``Authorization`` header; a provider error that quotes
the key reaches the caller as the ``openai`` client raised it, and our log lines redact it; a
stream cut off mid-way exits the hooks with the error before the caller sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import openai
import pytest

from datasette_llm import LLM, ProviderError
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.recorder import Recorder

KEY: Final = "sk-local-5a4b3c2d1e0f9876-provider"
CONFIG: Final[dict[str, Any]] = {
    "purposes": {"summaries": {"model": {"model": "local-gpt", "key": "LOCAL_PROVIDER_KEY"}}}
}


@pytest.fixture
def provider(llm_user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    monkeypatch.setenv("DATASETTE_SECRETS_LOCAL_PROVIDER_KEY", KEY)
    with serve() as running:
        write_extra_models(llm_user_dir, running, local_gpt="local")
        yield running


def by_route(model_id: str, prompt: str, purpose: str | None) -> tuple[str, str]:
    return f"enter {model_id} {purpose}", "exit"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_purpose_routed_to_an_openai_model_sends_the_routed_key_over_http(
    make_datasette: MakeDatasette,
    provider: Provider,
    register_plugin: RegisterPlugin,
    stream: bool,
) -> None:
    recorder = Recorder(by_route)
    register_plugin(recorder, name="recorder")
    model = await LLM(make_datasette(CONFIG)).model(purpose="summaries")
    response = await model.prompt("Summarize this row", stream=stream)
    assert await response.text() == "hello from the local provider"
    [request] = provider.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "local-gpt-upstream"
    assert request.body["messages"][-1]["content"] == "Summarize this row"
    assert bool(request.body.get("stream")) is stream
    assert recorder.events == ["enter local-gpt summaries", "exit"]
    usage = await response.usage()
    assert usage.output == 5


async def test_a_provider_error_quoting_the_key_is_redacted_in_our_log_lines(
    make_datasette: MakeDatasette, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.default = Reply(status=401, message=f"Incorrect API key provided: {KEY}.")
    caplog.set_level(logging.DEBUG, logger="datasette_llm")
    with pytest.raises(ProviderError) as raised:
        async with LLM(make_datasette(CONFIG)).group(purpose="summaries") as model:
            async for _ in model.chain("go").responses():
                pass  # each response has completed: the provider's error reaches the block
    assert provider.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert "Incorrect API key provided: [redacted]" in str(raised.value)
    assert KEY not in caplog.text


async def test_a_provider_error_reaches_the_caller_as_a_provider_error_caused_by_openai_s(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = Reply(status=400, message="This model's maximum context length is 8 tokens")
    model = await LLM(make_datasette(CONFIG)).model(purpose="summaries")
    with pytest.raises(ProviderError, match="maximum context length") as raised:
        await model.prompt("a long prompt")
    assert raised.value.kind == "context_window"
    assert raised.value.status == 400
    assert isinstance(raised.value.__cause__, openai.BadRequestError)


async def test_a_stream_cut_off_mid_way_exits_the_hooks_with_the_error_before_the_caller(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    recorder = Recorder(by_route)
    register_plugin(recorder, name="recorder")
    provider.default = Reply(text="one two three four", cut_after=2)
    model = await LLM(make_datasette(CONFIG)).model(purpose="summaries")
    chain = model.chain("go")
    seen: list[str] = []
    with pytest.raises(ProviderError) as raised:
        async for chunk in chain:
            seen.append(chunk)
    recorder.events.append("caller saw ProviderError")
    assert seen == ["one", " two"]  # no retry once a chunk has reached the caller
    assert len(provider.requests) == 1
    assert raised.value.kind == "connection"
    assert recorder.events[0] == "enter local-gpt summaries"
    assert recorder.events[1] in (
        "exit with APIConnectionError",
        "exit with RemoteProtocolError",
    ), recorder.events
    assert type(raised.value.__cause__).__name__ == recorder.events[1].removeprefix("exit with ")
    assert recorder.events[2] == "caller saw ProviderError"
    assert len(recorder.events) == 3, recorder.events
