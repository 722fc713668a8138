"""datasette-summarize, tested with datasette-llm's fake_model_router: no API key, no network."""

from __future__ import annotations

import pytest
from conftest import MakeDatasette
from syrupy.assertion import SnapshotAssertion

from datasette_llm.testing import FakeModelRouter, FakeReply

ANA = {"id": "ana"}


@pytest.mark.asyncio
async def test_summarize_routes_to_the_configured_model(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette, snapshot: SnapshotAssertion
) -> None:
    response = await make_datasette().client.get("/-/summarize?text=A+long+story")
    assert response.json() == {"summary": "Fake reply from gpt-5.4-mini to: A long story"}
    assert fake_model_router.calls == snapshot


@pytest.mark.asyncio
async def test_summarize_returns_the_model_reply_for_the_signed_in_actor(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette, snapshot: SnapshotAssertion
) -> None:
    fake_model_router.add_response(text="A story.", purpose="summarize")
    datasette = make_datasette()
    cookies = {"ds_actor": datasette.client.actor_cookie(ANA)}
    response = await datasette.client.get("/-/summarize?text=A+long+story", cookies=cookies)
    assert response.json() == {"summary": "A story."}
    assert fake_model_router.get_call() == snapshot


@pytest.mark.asyncio
async def test_a_provider_failure_is_a_502(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    fake_model_router.add_exception(TimeoutError("provider timed out"))
    response = await make_datasette().client.get("/-/summarize?text=hi")
    assert response.status_code == 502
    assert response.json() == {"error": "The model is unavailable (timeout): try again later."}


@pytest.mark.asyncio
async def test_no_text_means_no_prompt(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    response = await make_datasette().client.get("/-/summarize")
    assert response.status_code == 400
    assert fake_model_router.calls == ()


@pytest.mark.asyncio
async def test_rows_are_summarized_in_one_group(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette, snapshot: SnapshotAssertion
) -> None:
    fake_model_router.add_response(
        json={"summary": "Loved it", "sentiment": "positive"},
        prompt='{"title": "Great", "body": "Loved every page."}',
    )
    fake_model_router.add_callback(
        lambda call: FakeReply(json={"summary": "Fine", "sentiment": "neutral"}, usage=(12, 4))
    )
    datasette = make_datasette()
    cookies = {"ds_actor": datasette.client.actor_cookie(ANA)}
    response = await datasette.client.get("/reviews/reviews/-/summarize-rows", cookies=cookies)
    assert response.json() == {
        "rows": [
            {"rowid": 1, "summary": "Loved it", "sentiment": "positive"},
            {"rowid": 2, "summary": "Fine", "sentiment": "neutral"},
        ]
    }
    assert fake_model_router.calls == snapshot


@pytest.mark.asyncio
async def test_rows_get_schema_valid_replies_with_nothing_scripted(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    response = await make_datasette().client.get("/reviews/reviews/-/summarize-rows")
    first = response.json()["rows"][0]
    assert first == {"rowid": 1, "summary": "example", "sentiment": "positive"}
    assert len(fake_model_router.get_calls(purpose="summarize-rows")) == 2


@pytest.mark.asyncio
async def test_with_no_configuration_the_purpose_default_model_answers(
    fake_model_router: FakeModelRouter, make_datasette: MakeDatasette
) -> None:
    response = await make_datasette(None).client.get("/-/summarize?text=hi")
    assert response.json() == {"summary": "Fake reply from gpt-5.4-nano to: hi"}
    assert fake_model_router.get_call().step == "purpose_default"
