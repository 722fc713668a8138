"""API keys: where they come from, in which order, and that they reach the model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from datasette_llm import LLM, KeyStatus, ModelNotFoundError
from tests.conftest import MakeDatasette

pytestmark = pytest.mark.usefixtures("test_models")


async def reply(datasette: Any, **kwargs: Any) -> str:
    model = await LLM(datasette).model(**kwargs)
    return await (await model.prompt("hi")).text()


async def test_purpose_reference_key_comes_first(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_PURPOSE_KEY", "p" * 11)
    monkeypatch.setenv("DATASETTE_SECRETS_DEFAULT_KEY", "d" * 12)
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    datasette = make_datasette(
        {
            "default_model": {"model": "test-keyed", "key": "DEFAULT_KEY"},
            "purposes": {"p": {"model": {"model": "test-keyed", "key": "PURPOSE_KEY"}}},
        }
    )
    assert (await LLM(datasette).resolve(purpose="p")).key == KeyStatus("secret", "PURPOSE_KEY")
    assert "key-length=11" in await reply(datasette, purpose="p")
    assert (await LLM(datasette).resolve()).key == KeyStatus("secret", "DEFAULT_KEY")
    assert "key-length=12" in await reply(datasette)


async def test_default_model_key_applies_to_a_purpose_using_the_same_model(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_DEFAULT_KEY", "d" * 12)
    datasette = make_datasette(
        {
            "default_model": {"model": "test-keyed", "key": "DEFAULT_KEY"},
            "purposes": {"p": {"model": "test-keyed"}},
        }
    )
    assert "key-length=12" in await reply(datasette, purpose="p")


async def test_provider_secret_then_llm_key_store(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch, llm_user_dir: Any
) -> None:
    datasette = make_datasette({"default_model": "test-keyed"})
    (llm_user_dir / "keys.json").write_text(json.dumps({"testprov": "k" * 14}))
    assert (await LLM(datasette).resolve()).key == KeyStatus("llm")
    assert "key-length=14" in await reply(datasette)
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    assert (await LLM(datasette).resolve()).key == KeyStatus("secret", "TESTPROV_API_KEY")
    assert "key-length=13" in await reply(datasette)


async def test_llm_get_key_is_looked_up_at_call_time_with_keywords(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm

    calls: list[dict[str, Any]] = []

    def fake_get_key(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "g" * 15

    monkeypatch.setattr(llm, "get_key", fake_get_key)
    assert "key-length=15" in await reply(make_datasette({"default_model": "test-keyed"}))
    # Ours is the first call; llm then calls it again itself with the key we pass.
    assert calls[0] == {"key_alias": "testprov", "env_var": "TESTPROV_KEY"}


async def test_an_empty_custom_secret_falls_back_to_the_provider_secret(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    datasette = make_datasette({"default_model": {"model": "test-keyed", "key": "UNSET_KEY"}})
    assert (await LLM(datasette).resolve()).key == KeyStatus("secret", "TESTPROV_API_KEY")


async def test_missing_key_names_the_secret_to_set(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette(
        {"require_keys": False, "default_model": {"model": "test-keyed", "key": "TEAM_KEY"}}
    )
    assert (await LLM(datasette).resolve()).key == KeyStatus("missing", "TEAM_KEY")
    datasette = make_datasette({"require_keys": False, "default_model": "test-keyed"})
    status = (await LLM(datasette).resolve()).key
    assert status == KeyStatus("missing", "TESTPROV_API_KEY")
    assert not status.available


async def test_with_require_keys_a_model_without_a_key_is_not_routed_and_the_secret_is_named(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette({"default_model": {"model": "test-keyed", "key": "TEAM_KEY"}})
    with pytest.raises(ModelNotFoundError) as caught:
        await LLM(datasette).model()
    assert (
        "default_model chose 'test-keyed', skipped because it has no API key (set the secret "
        "TEAM_KEY)" in str(caught.value)
    )


async def test_register_secrets_lists_provider_keys_and_configured_key_names(
    make_datasette: MakeDatasette,
) -> None:
    from datasette_secrets import get_secrets

    datasette = make_datasette(
        {
            "default_model": {"model": "echo", "key": "DEFAULT_KEY"},
            "purposes": {"p": {"models": [{"model": "test-a", "key": "P_KEY"}]}},
        }
    )
    secrets = {secret.name: secret for secret in await get_secrets(datasette)}
    assert {"TESTPROV_API_KEY", "ECHO-NEEDS-KEY_API_KEY", "DEFAULT_KEY", "P_KEY"} <= set(secrets)
    assert secrets["P_KEY"].description == (
        "API key configured at plugins.datasette-llm.purposes.p.models[0]"
    )


async def test_an_explicit_key_argument_wins_over_the_resolved_key(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "t" * 13)
    model = await LLM(make_datasette()).model("test-keyed")
    assert "key-length=3" in await (await model.prompt("hi", key="abc")).text()
