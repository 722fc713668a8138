"""Keys configured the Datasette way, keys pasted by mistake, datasette-secrets' encrypted store.

A key written ``key: {$env: VAR}`` is used, and every surface names ``$env VAR``, never the
value; a value that came from ``$env`` or sits where a key belongs is never quoted in an error;
viewing the routing page or listing models is not a use of a stored secret. The store is the
real datasette-secrets one, with a Fernet-encrypted row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import llm
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from datasette.app import Datasette
from datasette.cli import cli

from datasette_llm import LLM, ConfigurationError, KeyStatus
from tests.conftest import MakeDatasette
from tests.secrets_store import audit, store_secret

pytestmark = pytest.mark.usefixtures("test_models")

VALUE: Final = "sk-env-9f8e7d6c5b4a3210-value"
"""The key's value: it must appear nowhere but in the prompt sent to the model."""


def as_root(datasette: Datasette) -> dict[str, Any]:
    datasette.root_enabled = True
    return {"cookies": {"ds_actor": datasette.client.actor_cookie({"id": "root"})}}


ENV_CONFIG: Final[dict[str, Any]] = {
    "purposes": {
        "summaries": {"model": {"model": "test-keyed", "key": {"$env": "SUMMARIES_PROVIDER_KEY"}}}
    }
}


async def test_a_key_from_env_is_used_and_every_surface_names_the_variable_not_the_value(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SUMMARIES_PROVIDER_KEY", VALUE)
    datasette = make_datasette(ENV_CONFIG)
    client = LLM(datasette)
    model = await client.model(purpose="summaries")
    assert (await (await model.prompt("hi")).text()).endswith(f"key-length={len(VALUE)}")

    resolution = await client.resolve(purpose="summaries")
    assert resolution.key == KeyStatus("env", "SUMMARIES_PROVIDER_KEY")
    assert VALUE not in repr(resolution) and VALUE not in repr(model)

    page = await datasette.client.get("/-/llm", **as_root(datasette))
    assert page.status_code == 200
    assert "<code>$env</code>" in page.text and "SUMMARIES_PROVIDER_KEY" in page.text
    report = await datasette.client.get("/-/llm.json", **as_root(datasette))
    assert report.status_code == 200
    assert VALUE not in page.text and VALUE not in report.text
    assert '"source": "env"' in json.dumps(report.json())


def test_the_cli_names_the_variable_of_a_key_from_env_not_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SUMMARIES_PROVIDER_KEY", VALUE)
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm": ENV_CONFIG}}))
    for command in (["llm", "purposes"], ["llm", "purposes", "--json"], ["llm", "check"]):
        result = CliRunner().invoke(cli, [*command, "-c", str(config)], catch_exceptions=False)
        assert VALUE not in result.output, command
        assert result.exit_code == 0, (command, result.output)
    purposes = CliRunner().invoke(cli, ["llm", "purposes", "-c", str(config)])
    assert "$env SUMMARIES_PROVIDER_KEY" in purposes.output


async def test_a_key_pasted_into_key_is_refused_without_repeating_it(
    make_datasette: MakeDatasette,
) -> None:
    pasted = "gsk_3fXq9ZkL2mN8pR4tV6wY0aB"
    with pytest.raises(ConfigurationError) as refused:
        await LLM(make_datasette({"default_model": {"model": "test-keyed", "key": pasted}})).model()
    message = str(refused.value)
    assert pasted not in message
    assert "plugins.datasette-llm.default_model.key" in message
    assert "$env" in message  # says how to give a key instead


async def test_a_value_from_env_is_never_quoted_in_an_error(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key's variable given where a model id belongs: the model is "not installed".
    monkeypatch.setenv("WRONG_PLACE", VALUE)
    raw = {"default_model": {"$env": "WRONG_PLACE"}, "models": {"$env": "WRONG_PLACE"}}
    with pytest.raises(ConfigurationError) as malformed:
        await LLM(make_datasette(raw)).model()
    assert VALUE not in str(malformed.value)
    assert "(the value of $env WRONG_PLACE)" in str(malformed.value)

    datasette = make_datasette({"default_model": {"$env": "WRONG_PLACE"}})
    with pytest.raises(llm.UnknownModelError) as unknown:
        await LLM(datasette).model()
    assert VALUE not in str(unknown.value)
    assert "(the value of $env WRONG_PLACE)" in str(unknown.value)


def test_check_never_quotes_a_value_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WRONG_PLACE", VALUE)
    config = tmp_path / "datasette.yaml"
    raw = {"default_model": {"$env": "WRONG_PLACE"}}
    config.write_text(json.dumps({"plugins": {"datasette-llm": raw}}))
    check = CliRunner().invoke(cli, ["llm", "check", "-c", str(config)])
    assert VALUE not in check.output
    assert "(the value of $env WRONG_PLACE)" in check.output


# datasette-secrets' encrypted store

ENCRYPTION_KEY: Final = Fernet.generate_key().decode()
STORED: Final = "sk-stored-0a1b2c3d4e5f6789-secret"


async def store_datasette(make_datasette: MakeDatasette) -> Datasette:
    datasette = make_datasette(
        {"purposes": {"summaries": {"model": {"model": "test-keyed", "key": "STORED_KEY"}}}},
        config={"plugins": {"datasette-secrets": {"encryption-key": ENCRYPTION_KEY}}},
    )
    await datasette.invoke_startup()
    await store_secret(datasette, "STORED_KEY", STORED, ENCRYPTION_KEY)
    return datasette


async def test_looking_at_routing_is_not_a_use_of_a_stored_secret_and_a_prompt_is(
    make_datasette: MakeDatasette,
) -> None:
    datasette = await store_datasette(make_datasette)
    client = LLM(datasette)
    before = await audit(datasette, "STORED_KEY")
    assert before == (None, "earlier-user")

    assert (await client.resolve(purpose="summaries")).key == KeyStatus("secret", "STORED_KEY")
    listed = await client.models(purpose="summaries")
    assert listed[0].model_id == "test-keyed"
    for path in ("/-/llm", "/-/llm.json"):
        response = await datasette.client.get(path, **as_root(datasette))
        assert response.status_code == 200, path
        assert STORED not in response.text
    assert await audit(datasette, "STORED_KEY") == before

    model = await client.model(purpose="summaries", actor={"id": "ann"})
    assert (await (await model.prompt("hi")).text()).endswith(f"key-length={len(STORED)}")
    used_at, used_by = await audit(datasette, "STORED_KEY")
    assert used_by == "ann" and used_at is not None


async def test_datasette_secrets_pages_answer_with_the_encrypted_store_configured(
    make_datasette: MakeDatasette,
) -> None:
    datasette = await store_datasette(make_datasette)
    for path in ("/-/secrets", "/-/llm", "/"):
        response = await datasette.client.get(path, **as_root(datasette))
        assert response.status_code == 200, (path, response.text[:500])
