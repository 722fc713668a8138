"""llm-anthropic's models, adapted as llm's OpenAI models are: one request per attempt, one
pooled ``anthropic.AsyncAnthropic`` per key and base URL.

llm-anthropic (installed with pip, as its users install it) builds an ``AsyncAnthropic`` in
``execute()``; its models here point at the local provider, which answers Anthropic's Messages
API as the real service does (``tests/openai_server.py``: its server-sent events, its error
bodies, ``Retry-After``). The ``anthropic`` client keeps its default options.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, Final

import anthropic
import llm
import llm_anthropic  # type: ignore[import-untyped]  # untyped
import pytest

from datasette_llm import LLM, ProviderError
from datasette_llm.prompting.attempts import client_retries, tries_of
from datasette_llm.prompting.clients import AnthropicClients, adapt, adapted, client_library
from tests.conftest import MakeDatasette
from tests.llm_models import SyncStub
from tests.openai_server import Provider, Reply, serve

QUICK_429: Final = Reply(status=429, message="slow down", headers={"retry-after": "0.01"})


class ClaudePlugin:
    """An llm plugin registering two of llm-anthropic's async models at the local provider."""

    def __init__(self, base_url: str) -> None:
        self.models: dict[str, Any] = {
            model_id: llm_anthropic.AsyncClaudeMessages(model_id, base_url=base_url)
            for model_id in ("claude-primary", "claude-backup")
        }

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        for model in self.models.values():
            register(SyncStub(model.model_id), model)  # llm-anthropic's: anthropic/<id>


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    # llm-anthropic's models need the key llm finds for "anthropic": its environment variable.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-local-test")
    with serve() as running:
        yield running


@pytest.fixture
def claude(provider: Provider) -> Iterator[ClaudePlugin]:
    plugin = ClaudePlugin(f"http://127.0.0.1:{provider.port}")
    llm.plugins.pm.register(plugin, name="test-claude-models")
    try:
        yield plugin
    finally:
        llm.plugins.pm.unregister(name="test-claude-models")


def config(**purpose: Any) -> dict[str, Any]:
    settings = {
        "model": "anthropic/claude-primary",
        "fallbacks": ["anthropic/claude-backup"],
        **purpose,
    }
    return {"purposes": {"summaries": settings}}


def upstream(provider: Provider) -> list[str]:
    """The model of every request the provider received, in order."""
    assert {seen.path for seen in provider.requests} <= {"/v1/messages"}
    return [str(seen.body["model"]) for seen in provider.requests]


def retry_counts(provider: Provider) -> list[str | None]:
    """The ``anthropic`` client's own count of retries, on each request it sent."""
    return [seen.headers.get("x-stainless-retry-count") for seen in provider.requests]


async def test_llm_anthropic_s_models_are_recognised_by_their_client_and_adapted(
    claude: ClaudePlugin,
) -> None:
    model = claude.models["claude-primary"]
    assert client_library(model) == "anthropic"
    subclass: type[Any] = type("Sub", (llm_anthropic.AsyncClaudeMessages,), {})
    assert client_library(subclass("claude-sub")) == "anthropic"
    assert adapt(model) and adapted(model)
    assert isinstance(llm_anthropic.AsyncAnthropic, AnthropicClients)
    assert (client_retries(model), tries_of(model, 2)) == (0, 3)


async def test_each_attempt_of_an_llm_anthropic_model_is_one_request(
    make_datasette: MakeDatasette, provider: Provider, claude: ClaudePlugin
) -> None:
    provider.script = [QUICK_429, QUICK_429, Reply(text="third try")]
    ds = make_datasette(config(fallbacks=[], retries=2))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "third try"
    assert upstream(provider) == ["claude-primary"] * 3
    assert retry_counts(provider) == ["0", "0", "0"]  # the client never retried by itself
    outcomes = [(r.attempt, r.outcome) for r in await LLM(ds).usage_records()]
    assert outcomes == [(1, "rate_limit"), (2, "rate_limit"), (3, "ok")]


async def test_a_429_beyond_max_wait_goes_to_the_fallback_at_once_and_the_model_cools_down(
    make_datasette: MakeDatasette, provider: Provider, claude: ClaudePlugin
) -> None:
    cooling = Reply(status=429, message="slow down", headers={"retry-after": "30"})
    provider.script = [cooling, Reply(text="from the backup"), Reply(text="backup again")]
    ds = make_datasette(config(max_wait=5))
    began = time.monotonic()
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "from the backup"
    assert time.monotonic() - began < 3  # the client slept through none of the Retry-After
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "backup again"
    assert upstream(provider) == ["claude-primary", "claude-backup", "claude-backup"]


async def test_a_server_error_of_an_llm_anthropic_model_is_a_server_error_with_no_key_in_it(
    make_datasette: MakeDatasette, provider: Provider, claude: ClaudePlugin
) -> None:
    provider.default = Reply(status=500, message="Internal server error")
    ds = make_datasette(config(fallbacks=[], retries=0))
    with pytest.raises(ProviderError) as raised:
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert (raised.value.kind, raised.value.status) == ("server_error", 500)
    assert provider.counts.requests == 1
    assert "sk-ant-local-test" not in repr(raised.value) + str(raised.value.__cause__)


async def test_prompts_share_one_pooled_client_and_the_plugin_s_own_use_is_unchanged(
    make_datasette: MakeDatasette, provider: Provider, claude: ClaudePlugin
) -> None:
    ds = make_datasette(config())
    for text in ("one", "two", "three"):
        provider.script = [Reply(text=text)]
        model = await LLM(ds).model(purpose="summaries")
        assert await (await model.prompt("hi")).text() == text
    assert provider.counts.connections == 1  # one client, its connection kept alive
    # Outside datasette-llm's attempts the plugin builds its client as it always did.
    own = llm_anthropic.AsyncAnthropic(api_key="sk-ant-other", base_url="http://127.0.0.1:9")
    assert type(own) is anthropic.AsyncAnthropic
    assert own.max_retries == anthropic.DEFAULT_MAX_RETRIES
    await own.close()


@pytest.mark.parametrize("moment", ["during the request", "mid-stream"])
async def test_a_cancelled_attempt_of_an_llm_anthropic_model_is_one_row_charged_for_its_chunks(
    make_datasette: MakeDatasette, provider: Provider, claude: ClaudePlugin, moment: str
) -> None:
    words = " ".join(f"w{number}" for number in range(12))
    during = moment == "during the request"
    provider.script = [Reply(delay=30) if during else Reply(text=words, interval=0.1)]
    ds = make_datasette(config())
    model = await LLM(ds).model(purpose="summaries")

    async def prompt() -> str:
        return await (await model.prompt("hi")).text()

    task = asyncio.ensure_future(prompt())
    while provider.counts.requests == 0:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1 if during else 0.35)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await LLM(ds).usage_records()
    assert (row.model, row.outcome) == ("anthropic/claude-primary", "cancelled")
    assert provider.counts.requests == 1  # the ledger's rows = the requests received
    if not during:
        assert row.output_tokens is not None and row.output_tokens >= 1
