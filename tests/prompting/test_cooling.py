"""Bounded waits for ``Retry-After``, and a cool-down that honours ``fallback_on``.

Against llm's own OpenAI plugin and the local provider: a ``Retry-After`` longer than the
prompt may wait (the time left before its ``deadline``; without one, ``max_wait``) sends the
prompt to its fallback at once, and the model cools down for it. A model cools down for every
purpose, but only a prompt that may fall back on ``rate_limit`` is sent elsewhere meanwhile;
and the one try allowed to find out whether it has recovered hands that on when it is
cancelled or refused by a hook.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from datasette_llm import LLM, Actor, PromptResult, ProviderError
from datasette_llm.config.parser import parse_config
from datasette_llm.config.values import settings_for
from datasette_llm.errors import ConfigurationError
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models

ROOT: Final = "plugins.datasette-llm"


def config(**purpose: Any) -> dict[str, Any]:
    settings = {"model": "primary-gpt", "fallbacks": ["backup-gpt"], **purpose}
    return {"purposes": {"summaries": settings}}


def too_many(seconds: str) -> Reply:
    return Reply(status=429, message="slow down", headers={"retry-after": seconds})


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    """The primary's provider; the backup's answers ``from the backup`` (``BACKUP``)."""
    with serve() as primary, serve(default=Reply(text="from the backup")) as backup:
        write_extra_models(llm_user_dir, {"primary-gpt": primary, "backup-gpt": backup})
        BACKUP[:] = [backup]
        yield primary


BACKUP: list[Provider] = []


def backup_requests() -> int:
    return len(BACKUP[0].requests)


# max_wait: the setting


def test_max_wait_is_a_resilience_setting_per_purpose_over_global() -> None:
    parsed = parse_config({"max_wait": 5, "purposes": {"p": {"max_wait": 0.5}, "q": {}}})
    assert settings_for(parsed, "p").resilience.max_wait == 0.5
    assert settings_for(parsed, "p").set_at["max_wait"] == f"{ROOT}.purposes.p.max_wait"
    assert settings_for(parsed, "q").resilience.max_wait == 5
    assert settings_for(parsed, "q").set_at["max_wait"] == f"{ROOT}.max_wait"
    assert settings_for(parse_config({}), None).resilience.max_wait == 60
    assert settings_for(parse_config({}), None).set_at["max_wait"] is None


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "soon", True])
def test_max_wait_must_be_a_positive_finite_number_of_seconds(value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"{ROOT}\.purposes\.p\.max_wait: expected a"):
        parse_config({"purposes": {"p": {"max_wait": value}}})


# Bounded waits


async def test_a_retry_after_beyond_max_wait_goes_to_the_fallback_at_once_and_cools_the_model(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = too_many("86400")
    ds = make_datasette(config(retries=5))  # no deadline: max_wait, 60 s by default
    started = time.monotonic()
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "from the backup"
    assert time.monotonic() - started < 10  # not a day
    sent = len(provider.requests)
    response = await (await LLM(ds).model(purpose="summaries")).prompt("again")
    assert await response.text() == "from the backup"
    assert len(provider.requests) == sent  # the primary cools down for a day
    assert backup_requests() == 2


async def test_a_retry_after_beyond_max_wait_with_no_fallback_raises_rate_limit_at_once(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = too_many("86400")
    ds = make_datasette(config(fallbacks=[], retries=5))
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert raised.value.kind == "rate_limit"
    assert time.monotonic() - started < 10
    sent = len(provider.requests)
    with pytest.raises(ProviderError) as raised:  # cooling: nothing is sent
        await (await LLM(ds).model(purpose="summaries")).prompt("again")
    assert raised.value.kind == "rate_limit"
    assert len(provider.requests) == sent


async def test_a_retry_after_within_max_wait_is_waited_for_and_beyond_it_is_not(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    provider.default = too_many("2")
    ds = make_datasette(config(retries=5, max_wait=0.5))
    started = time.monotonic()
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "from the backup"
    assert time.monotonic() - started < 1.5  # 2 s is more than max_wait: not waited for

    provider.requests.clear()
    provider.default = Reply(text="primary after waiting")
    provider.script = [too_many("0.3")]
    ds = make_datasette(config(retries=5, max_wait=2, fallbacks=[]))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "primary after waiting"
    assert len(provider.requests) == 2


# The cool-down honours fallback_on


@pytest.mark.parametrize("fallback_on", [[], ["server_error", "timeout"]])
async def test_a_cooling_model_is_not_skipped_for_the_fallback_unless_fallback_on_says_so(
    make_datasette: MakeDatasette, provider: Provider, fallback_on: list[str]
) -> None:
    ds = make_datasette(config(fallback_on=fallback_on))
    provider.default = too_many("0.5")
    with pytest.raises(ProviderError, match="rate_limit"):
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    provider.default = Reply(text="the primary, once cooled")
    sent = len(provider.requests)
    response = await (await LLM(ds).model(purpose="summaries")).prompt("next")
    assert await response.text() == "the primary, once cooled"
    assert len(provider.requests) == sent + 1
    assert backup_requests() == 0


async def test_a_cool_down_longer_than_max_wait_without_fallback_on_rate_limit_raises(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config(fallback_on=[], max_wait=0.5))
    provider.default = too_many("30")
    with pytest.raises(ProviderError, match="rate_limit"):
        await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    sent = len(provider.requests)
    with pytest.raises(ProviderError, match="cools down after rate limits") as raised:
        await (await LLM(ds).model(purpose="summaries")).prompt("next")
    assert raised.value.kind == "rate_limit"
    assert len(provider.requests) == sent  # neither the primary nor the fallback
    assert backup_requests() == 0


async def test_max_wait_bounds_the_whole_wait_while_a_slow_try_finds_out_if_the_model_recovered(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    ds = make_datasette(config(fallback_on=[], max_wait=1, retries=0))
    model = await LLM(ds).model(purpose="summaries")
    provider.script = [too_many("0.3"), Reply(text="the slow answer", delay=6)]
    with pytest.raises(ProviderError, match="rate_limit"):
        await model.prompt("hi")  # the model cools down for 0.3 s
    await asyncio.sleep(0.4)
    probe = asyncio.ensure_future(model.prompt("probe"))  # finds out, slowly
    while len(provider.requests) < 2:
        await asyncio.sleep(0.01)
    began = time.monotonic()
    with pytest.raises(ProviderError, match="cools down after rate limits") as raised:
        await model.prompt("next")  # waits for the probe, one renewed wait after another
    assert raised.value.kind == "rate_limit"
    assert time.monotonic() - began < 2.5  # max_wait in all, not the probe's 6 s
    assert len(provider.requests) == 2  # nothing sent for it
    assert await (await probe).text() == "the slow answer"


class Refuses:
    """Refuses the next attempt on the primary, as a budget hook does."""

    def __init__(self) -> None:
        self.armed = False

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
    ) -> Any:
        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            if self.armed and model_id == "primary-gpt":
                self.armed = False
                raise PermissionError("the hook refuses this attempt")
            yield

        return around


async def cool_down_then_wait(ds: Any, provider: Provider) -> None:
    """Rate-limit the primary for 0.3 s (the prompt goes to the fallback), then let it cool."""
    provider.default = too_many("0.3")
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "from the backup"
    provider.default = Reply(text="the primary has recovered")
    await asyncio.sleep(0.4)


@pytest.mark.parametrize("ending", ["refused by a hook", "cancelled"])
async def test_a_probe_that_ends_without_an_answer_hands_the_probe_on(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin, ending: str
) -> None:
    refuses = Refuses()
    register_plugin(refuses, name="refuses")
    ds = make_datasette(config())
    await cool_down_then_wait(ds, provider)
    model = await LLM(ds).model(purpose="summaries")
    if ending == "refused by a hook":
        refuses.armed = True
        with pytest.raises(PermissionError):
            await model.prompt("the probe")
    else:
        provider.script = [Reply(delay=5)]
        probe = asyncio.ensure_future(model.prompt("the probe"))
        await asyncio.sleep(0.3)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    sent = len(provider.requests), backup_requests()
    response = await (await LLM(ds).model(purpose="summaries")).prompt("next")
    assert await response.text() == "the primary has recovered"
    assert (len(provider.requests), backup_requests()) == (sent[0] + 1, sent[1])


# What a rate limit finds: the fallbacks that may answer it


def no_retry_after() -> Reply:
    return Reply(status=429, message="quota exceeded")


async def test_a_rate_limit_without_retry_after_is_retried_when_every_fallback_is_refused(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    """A fallback refused by policy never answers: the prompt has no later model to go to,
    so the rate-limited model is retried after its cool-down, as with no fallback at all."""
    provider.script = [no_retry_after()]
    provider.default = Reply(text="the primary, after its cool-down")
    ds = make_datasette(config(blocked_models=["backup-gpt"]))
    response = await (await LLM(ds).model(purpose="summaries")).prompt("hi")
    assert await response.text() == "the primary, after its cool-down"
    assert (len(provider.requests), backup_requests()) == (2, 0)


async def test_a_fallback_is_admitted_only_when_a_rate_limit_asks_for_it(
    make_datasette: MakeDatasette, provider: Provider, register_plugin: RegisterPlugin
) -> None:
    """Whether a later model may answer is found out when a rate limit makes it matter: a
    prompt answered at once admits (and reads the key of) no fallback."""
    screened: list[list[str]] = []

    class Screens:
        @hookimpl
        def llm_filter_models(self, models: list[Any]) -> None:
            screened.append([model.model_id for model in models])

    register_plugin(Screens(), name="screens")
    ds = make_datasette(config())
    model = await LLM(ds).model(purpose="summaries")
    screened.clear()
    await (await model.prompt("answered at once")).text()
    assert screened == []
    provider.script = [no_retry_after()]
    assert await (await model.prompt("rate limited")).text() == "from the backup"
    assert screened == [["backup-gpt"]]  # admitted once, then tried


async def test_a_fallback_rate_limited_is_retried_while_the_model_deferred_before_it_still_cools(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    """Going on from a rate-limited model needs a later model that may answer now: one
    deferred for its own cool-down does not count until it has cooled."""
    ds = make_datasette(config(max_wait=5))
    provider.default = too_many("30")  # longer than max_wait: the primary cools for 30 s
    model = await LLM(ds).model(purpose="summaries")
    assert await (await model.prompt("first")).text() == "from the backup"
    BACKUP[0].script = [no_retry_after()]
    response = await model.prompt("second")  # the primary deferred; the backup limited once
    assert await response.text() == "from the backup"
    assert len(provider.requests) == 1  # the cooling primary was not asked again
    assert backup_requests() == 3


# Tries queued under the model's limits when its cool-down begins


@pytest.mark.parametrize("limit", [{"concurrency": 1}, {"rpm": 40}], ids=["concurrency", "rpm"])
@pytest.mark.parametrize("way", ["prompt", "chain"])
async def test_tries_waiting_for_a_place_when_the_model_starts_to_cool_do_not_go_to_it(
    make_datasette: MakeDatasette, provider: Provider, way: str, limit: dict[str, int]
) -> None:
    """Three prompts at once under ``concurrency: 1`` (or turns 1.5 s apart): the first is
    answered 429, after 0.1 s, with a Retry-After beyond ``max_wait``; the two waiting for
    their place go to the fallback, not to the cooling model."""
    provider.default = Reply(
        status=429, message="slow down", headers={"retry-after": "30"}, delay=0.1
    )
    ds = make_datasette(config(model={"model": "primary-gpt", **limit}, max_wait=1))
    model = await LLM(ds).model(purpose="summaries")

    async def one(text: str) -> str:
        if way == "prompt":
            return await (await model.prompt(text)).text()
        return await model.chain(text).text()

    answers = await asyncio.gather(*(one(f"prompt {number}") for number in range(3)))
    assert answers == ["from the backup"] * 3
    assert (len(provider.requests), backup_requests()) == (1, 3)


async def test_tries_waiting_for_a_place_go_when_the_prompt_could_wait_out_the_cool_down(
    make_datasette: MakeDatasette, provider: Provider
) -> None:
    """A cool-down the prompts may wait for (1 s, ``max_wait: 5``) does not hold back the tries
    already placed: the limits space them out, as against a provider limiting requests per
    second. The rate-limited prompt itself waits and is answered by the primary."""
    provider.script = [
        Reply(status=429, message="slow down", headers={"retry-after": "1"}, delay=0.3)
    ]
    provider.default = Reply(text="from the primary")
    ds = make_datasette(config(model={"model": "primary-gpt", "concurrency": 1}, max_wait=5))
    model = await LLM(ds).model(purpose="summaries")
    answers = await asyncio.gather(*(model.prompt(f"prompt {n}") for n in range(3)))
    assert [await answer.text() for answer in answers] == ["from the primary"] * 3
    assert (len(provider.requests), backup_requests()) == (4, 0)
