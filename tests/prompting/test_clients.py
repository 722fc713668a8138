"""The provider's client, owned by datasette-llm: one request per attempt, one pooled client per
endpoint and key.

Against llm's own OpenAI plugin, a plugin subclassing its classes and a plugin building its own
client, each pointed at the local provider (``tests/openai_server.py``), which answers as the
real service does: the ``openai`` client keeps its default options, and nothing tells it not to
retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import llm
import openai
import pytest
from llm.default_plugins.openai_models import AsyncChat, AsyncResponses

from datasette_llm import LLM, ProviderError
from datasette_llm.prompting.attempts import client_retries, tries_of
from datasette_llm.prompting.clients import POOL_SIZE, adapt, one_attempt
from tests.conftest import MakeDatasette
from tests.llm_models import SyncStub
from tests.openai_server import Provider, Reply, serve, write_extra_models

QUICK_429: Final = Reply(status=429, message="slow down", headers={"retry-after": "0.01"})


def config(**purpose: Any) -> dict[str, Any]:
    settings = {"model": "primary-gpt", "fallbacks": ["backup-gpt"], **purpose}
    return {"purposes": {"summaries": settings}}


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(
            llm_user_dir, running, primary_gpt=None, backup_gpt=None, keyed_gpt="keyed"
        )
        yield running


def upstream(provider: Provider) -> list[str]:
    """The model of every request the provider received, in order."""
    return [str(seen.body["model"]).removesuffix("-upstream") for seen in provider.requests]


def installed(model_id: str) -> Any:
    """llm's own model of that id (llm's OpenAI classes are untyped)."""
    return llm.get_async_model(model_id)


def retry_counts(provider: Provider) -> list[str | None]:
    """The ``openai`` client's own count of retries, on each request it sent."""
    return [seen.headers.get("x-stainless-retry-count") for seen in provider.requests]


class RouterChat(AsyncChat):
    """A plugin's model class that subclasses llm's and keeps its ``get_client`` (the pattern
    of llm-openrouter)."""


class OwnClientChat(AsyncChat):
    """A plugin's model class that builds its own client (the pattern of Azure variants)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # llm's, untyped
        self.built: list[openai.AsyncOpenAI] = []

    def get_client(self, key: str | None = None, *, async_: bool = False) -> Any:
        client = openai.AsyncOpenAI(base_url=self.api_base, api_key="its-own-key")
        self.built.append(client)
        return client


class SubclassingPlugin:
    """An llm plugin registering one model of each class above at the local provider."""

    def __init__(self, api_base: str) -> None:
        classes: dict[str, type[Any]] = {"router-gpt": RouterChat, "own-gpt": OwnClientChat}
        self.models: dict[str, Any] = {
            model_id: model_class(model_id, model_name=f"{model_id}-upstream", api_base=api_base)
            for model_id, model_class in classes.items()
        }

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        for model_id, model in self.models.items():
            model.needs_key = None
            register(SyncStub(model_id), model)


@pytest.fixture
def subclassing(provider: Provider) -> Iterator[SubclassingPlugin]:
    plugin = SubclassingPlugin(provider.api_base)
    llm.plugins.pm.register(plugin, name="test-subclassing-openai")
    try:
        yield plugin
    finally:
        llm.plugins.pm.unregister(name="test-subclassing-openai")


# One request per attempt


async def test_each_attempt_of_llm_s_openai_model_is_one_request(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = QUICK_429
    model = await LLM(make_datasette(config(fallbacks=[], retries=2))).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == "rate_limit"
    assert [(a.model_id, a.error) for a in raised.value.attempts] == [
        ("primary-gpt", "rate_limit")
    ] * 3
    assert provider.counts.requests == 3
    assert retry_counts(provider) == ["0", "0", "0"]  # the client never retried by itself


async def test_a_429_reaches_the_attempt_at_once_however_long_its_retry_after(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = Reply(status=429, message="slow down", headers={"retry-after": "5"})
    ds = make_datasette(config(fallbacks=[], retries=0, timeout=10))
    model = await LLM(ds).model(purpose="summaries")
    began = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert time.monotonic() - began < 2  # neither the Retry-After nor the timeout was waited
    assert (raised.value.kind, raised.value.retry_after) == ("rate_limit", 5)
    assert provider.counts.requests == 1
    assert [record.outcome for record in await LLM(ds).usage_records()] == ["rate_limit"]


async def test_a_429_beyond_the_deadline_goes_to_the_fallback_and_the_model_cools_down(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    cooling = Reply(status=429, message="slow down", headers={"retry-after": "30"})
    provider.script = [cooling, Reply(text="from the backup"), Reply(text="backup again")]
    ds = make_datasette(config(deadline=4))
    began = time.monotonic()
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "from the backup"
    assert time.monotonic() - began < 2
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "backup again"
    # The second prompt skipped the cooling primary: one request to it in all.
    assert upstream(provider) == ["primary-gpt", "backup-gpt", "backup-gpt"]
    outcomes = [(r.model, r.outcome) for r in await LLM(ds).usage_records()]
    assert outcomes == [("primary-gpt", "rate_limit"), ("backup-gpt", "ok"), ("backup-gpt", "ok")]


# One pooled client per endpoint, key and headers


async def test_prompts_to_one_endpoint_share_one_client_and_its_connection(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config())
    for text in ("one", "two", "three"):
        provider.script = [Reply(text=text)]
        model = await LLM(ds).model(purpose="summaries", model_id="backup-gpt")
        assert await (await model.prompt("hi")).text() == text
    model = await LLM(ds).model(purpose="summaries")
    await (await model.prompt("hi")).text()
    # primary-gpt and backup-gpt have one endpoint, no key and no headers: one client.
    assert upstream(provider) == ["backup-gpt"] * 3 + ["primary-gpt"]
    assert provider.counts.connections == 1


async def test_the_pooled_client_is_one_per_key_never_retries_and_takes_the_attempt_s_timeout(
    provider: Provider,
) -> None:
    model = installed("keyed-gpt")
    assert adapt(model)
    first = model.get_client("key-a", async_=True)
    assert model.get_client("key-a", async_=True) is first
    assert model.get_client("key-b", async_=True) is not first
    assert first.max_retries == 0
    with one_attempt(2.5):
        timed = model.get_client("key-a", async_=True)
    assert (timed.timeout, timed.max_retries, timed.api_key) == (2.5, 0, "key-a")
    with one_attempt(2.5):
        again = model.get_client("key-a", async_=True)
    with one_attempt(1.0):
        shorter = model.get_client("key-a", async_=True)
    assert again is timed  # the copy is kept for the next attempt with the same timeout
    assert shorter.timeout == 1.0
    assert shorter._client is timed._client is first._client  # one HTTP client: one pool
    assert model.get_client("key-a", async_=False).max_retries == openai.DEFAULT_MAX_RETRIES


async def test_the_least_recently_used_client_is_closed_once_no_attempt_uses_it(
    provider: Provider,
) -> None:
    model = installed("keyed-gpt")
    assert adapt(model)
    oldest = model.get_client("key-0", async_=True)
    with one_attempt(None):
        held = model.get_client("key-1", async_=True)
        for number in range(2, POOL_SIZE + 2):
            model.get_client(f"key-{number}", async_=True)
        await asyncio.sleep(0.05)
        assert oldest.is_closed()
        assert not held.is_closed()
    await asyncio.sleep(0.05)
    assert held.is_closed()


def test_the_clients_of_an_event_loop_are_closed_when_it_ends(provider: Provider) -> None:
    model = installed("primary-gpt")

    async def prompt() -> openai.AsyncOpenAI:
        assert adapt(model)
        assert await model.prompt("hi").text() == "hello from the local provider"
        client: openai.AsyncOpenAI = model.get_client(None, async_=True)
        assert not client.is_closed()
        return client

    first = asyncio.run(prompt())
    assert first.is_closed()
    second = asyncio.run(prompt())  # a new loop: a new client, closed in its turn
    assert second is not first and second.is_closed()
    assert provider.counts.connections == 2


# Plugins built on llm's OpenAI classes


async def test_a_plugin_subclassing_llm_s_openai_classes_is_adapted(
    make_datasette: MakeDatasette, provider: Provider, subclassing: SubclassingPlugin
) -> None:
    provider.script = [QUICK_429, QUICK_429, Reply(text="third try")]
    ds = make_datasette(config(model="router-gpt", fallbacks=[], retries=2))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "third try"
    assert upstream(provider) == ["router-gpt"] * 3
    assert retry_counts(provider) == ["0", "0", "0"]
    router = subclassing.models["router-gpt"]
    assert adapt(router)
    assert (client_retries(router), tries_of(router, 2)) == (0, 3)

    responses_class: type[Any] = type("ResponsesSubclass", (AsyncResponses,), {})
    assert adapt(responses_class("responses-gpt", api_base=provider.api_base))


async def test_a_plugin_building_its_own_client_is_left_unshared_and_counted_as_retrying(
    make_datasette: MakeDatasette, provider: Provider, subclassing: SubclassingPlugin
) -> None:
    own = subclassing.models["own-gpt"]
    assert not adapt(own)
    assert (client_retries(own), tries_of(own, 2)) == (openai.DEFAULT_MAX_RETRIES, 1)
    provider.script = [QUICK_429, QUICK_429, Reply(text="its client retried")]
    ds = make_datasette(config(model="own-gpt", fallbacks=[], retries=2))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "its client retried"
    # One try of datasette-llm's: the client's first request and its own two retries.
    assert retry_counts(provider) == ["0", "1", "2"]
    await (await LLM(ds).model(purpose="summaries")).prompt("again")
    assert len(own.built) == 2 and own.built[0] is not own.built[1]
    assert "get_client" not in vars(own)


async def test_a_connection_error_names_the_address_it_could_not_reach(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = Reply(drop=True)
    ds = make_datasette(config(fallbacks=[], retries=0))
    with pytest.raises(ProviderError) as raised:
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert raised.value.kind == "connection"
    # The openai client's own message is only "Connection error.".
    assert f"http://127.0.0.1:{provider.port}/v1/chat/completions" in str(raised.value)


async def test_a_rejected_key_names_where_the_key_came_from_and_never_the_key(
    make_datasette: MakeDatasette, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_KEYED_API_KEY", "sk-wrong-key-0123456789")
    provider.default = Reply(status=401, message="Incorrect API key provided")
    ds = make_datasette(config(model="keyed-gpt", fallbacks=[], retries=0))
    with pytest.raises(ProviderError) as raised:
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert raised.value.kind == "auth"
    assert "The key sent came from the secret KEYED_API_KEY" in str(raised.value)
    assert "sk-wrong-key" not in str(raised.value) + repr(raised.value)
