"""The local OpenAI-compatible provider (``tests/openai_server.py``), driven by the real client.

Each behaviour is seen as the ``openai`` client sees it, with its own retries off.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from tests.openai_server import Provider, Reply, serve, write_extra_models

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def client(provider: Provider, timeout: float = 10, retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=provider.api_base, api_key="x", max_retries=retries, timeout=timeout
    )


async def ask(provider: Provider, timeout: float = 10, retries: int = 0) -> str | None:
    completion = await client(provider, timeout, retries).chat.completions.create(
        model="m", messages=MESSAGES
    )
    return completion.choices[0].message.content


async def streamed(provider: Provider) -> str:
    stream = await client(provider).chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_a_default_reply_answers_streamed_and_not_and_is_counted_ok() -> None:
    with serve() as provider:
        assert await ask(provider) == "hello from the local provider"
        assert await streamed(provider) == "hello from the local provider"
    assert provider.counts.requests == provider.counts.ok == 2
    assert [seen.body.get("stream") for seen in provider.requests] == [None, True]


async def test_requests_beyond_the_rate_answer_429_with_retry_after() -> None:
    with serve(rate_limit=3) as provider:
        for _ in range(3):
            await ask(provider)
        with pytest.raises(openai.RateLimitError) as raised:
            await ask(provider)
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 1
    assert 0 < int(raised.value.response.headers["retry-after-ms"]) <= 1000
    assert (provider.counts.ok, provider.counts.rate_limited) == (3, 1)


async def test_the_rate_window_frees_a_place_a_second_after_an_admitted_request() -> None:
    with serve(rate_limit=1) as provider:
        await ask(provider)
        with pytest.raises(openai.RateLimitError):
            await ask(provider)
        time.sleep(1.05)
        assert await ask(provider) == "hello from the local provider"


async def test_an_exhausted_quota_answers_429_insufficient_quota_to_everything() -> None:
    with serve(quota_exhausted=True) as provider:
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as raised:
                await ask(provider)
            assert raised.value.code == "insufficient_quota"
            assert "retry-after" not in raised.value.response.headers
    assert provider.counts.quota == 3


async def test_a_dropped_connection_is_a_connection_error_for_the_client() -> None:
    with serve() as provider:
        provider.script = [Reply(drop=True)]
        with pytest.raises(openai.APIConnectionError):
            await ask(provider)
        assert await ask(provider) == "hello from the local provider"
    assert (provider.counts.drops, provider.counts.ok) == (1, 1)


async def test_a_slow_first_byte_times_the_client_out_and_the_hang_up_is_counted() -> None:
    with serve() as provider:
        provider.script = [Reply(delay=2)]
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await ask(provider, timeout=0.3)
        assert time.monotonic() - started < 1.5
        deadline = time.monotonic() + 5
        while not provider.counts.abandoned and time.monotonic() < deadline:
            time.sleep(0.01)
    assert provider.counts.abandoned == 1


async def test_a_stream_cut_after_one_chunk_fails_the_client_after_the_first_word() -> None:
    with serve() as provider:
        provider.default = Reply(text="one two three", cut_after=1)
        stream = await client(provider).chat.completions.create(
            model="m", messages=MESSAGES, stream=True
        )
        words: list[str] = []
        with pytest.raises(Exception) as raised:
            async for chunk in stream:
                words.append(chunk.choices[0].delta.content or "")
    assert words == ["one"]
    assert type(raised.value).__name__ in ("APIConnectionError", "RemoteProtocolError")
    assert provider.counts.cuts == 1


async def test_a_server_error_is_a_500_for_the_client() -> None:
    with serve() as provider:
        provider.script = [Reply(status=500, message="boom")]
        with pytest.raises(openai.InternalServerError) as raised:
            await ask(provider)
    assert raised.value.status_code == 500
    assert provider.counts.server_errors == 1


async def test_the_client_s_own_retries_are_counted_from_its_retry_count_header() -> None:
    with serve() as provider:
        provider.script = [Reply(status=500, headers={"retry-after-ms": "10"})] * 2
        assert await ask(provider, retries=2) == "hello from the local provider"
    assert [seen.headers.get("x-stainless-retry-count") for seen in provider.requests] == [
        "0",
        "1",
        "2",
    ]
    assert (provider.counts.requests, provider.counts.retried) == (3, 2)


async def test_drawn_faults_follow_the_seed_and_are_tallied() -> None:
    outcomes = []
    for _ in range(2):
        with serve(server_errors=0.3, drops=0.3, seed=7) as provider:
            for _ in range(20):
                try:
                    await ask(provider)
                    outcomes.append("ok")
                except openai.InternalServerError:
                    outcomes.append("500")
                except openai.APIConnectionError:
                    outcomes.append("drop")
        counts = provider.counts
        assert counts.ok + counts.server_errors + counts.drops == counts.requests == 20
        assert counts.server_errors and counts.drops and counts.ok
    assert outcomes[:20] == outcomes[20:]


async def test_a_drawn_timeout_delays_the_answer_by_the_timeout_delay() -> None:
    with serve(timeouts=1.0, timeout_delay=0.3) as provider:
        started = time.monotonic()
        assert await ask(provider) == "hello from the local provider"
    assert time.monotonic() - started >= 0.3
    assert provider.counts.delayed == 1


async def test_latency_is_added_to_every_answer() -> None:
    with serve(latency=0.2) as provider:
        started = time.monotonic()
        await ask(provider)
        await streamed(provider)
    assert time.monotonic() - started >= 0.4


def test_fault_chances_that_cannot_be_drawn_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to at most 1"):
        Provider(server_errors=0.6, drops=0.6)
    with pytest.raises(ValueError, match="above 0"):
        Provider(rate_limit=0)


def test_models_may_point_at_different_providers(tmp_path: Path) -> None:
    first, second = Provider(port=1), Provider(port=2)
    write_extra_models(tmp_path, {"primary": first, "fallback": second}, primary="KEY")
    entries = json.loads((tmp_path / "extra-openai-models.yaml").read_text())
    assert entries == [
        {
            "model_id": "primary",
            "model_name": "primary-upstream",
            "api_base": "http://127.0.0.1:1/v1",
            "api_key_name": "KEY",
        },
        {
            "model_id": "fallback",
            "model_name": "fallback-upstream",
            "api_base": "http://127.0.0.1:2/v1",
        },
    ]
    write_extra_models(tmp_path, first, local_gpt=None)
    [entry] = json.loads((tmp_path / "extra-openai-models.yaml").read_text())
    assert entry["model_id"] == "local-gpt" and "api_key_name" not in entry
