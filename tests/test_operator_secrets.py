"""``datasette llm check`` sees keys in datasette-secrets' encrypted store without using them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from datasette.app import Datasette
from datasette.cli import cli

from tests.llm_models import TestModelsPlugin
from tests.secrets_store import audit as stored_audit
from tests.secrets_store import store_secret

ENCRYPTION_KEY: Final = Fernet.generate_key().decode()
STORED: Final = "sk-stored-in-the-encrypted-store-never-printed"
CONFIG: Final = {
    "plugins": {
        "datasette-secrets": {"encryption-key": ENCRYPTION_KEY},
        "datasette-llm": {
            "purposes": {"summaries": {"model": {"model": "test-keyed", "key": "STORED_KEY"}}}
        },
    }
}


def audit(internal: Path) -> tuple[object, object]:
    async def read() -> tuple[object, object]:
        datasette = Datasette(memory=True, internal=str(internal), config=CONFIG)
        return await stored_audit(datasette, "STORED_KEY")

    return asyncio.run(read())


@pytest.fixture
def store(tmp_path: Path, test_models: TestModelsPlugin) -> Path:
    """An internal database holding STORED_KEY, as ``datasette serve --internal`` keeps it."""
    internal = tmp_path / "internal.db"

    async def write() -> None:
        datasette = Datasette(memory=True, internal=str(internal), config=CONFIG)
        await datasette.invoke_startup()
        await store_secret(datasette, "STORED_KEY", STORED, ENCRYPTION_KEY)

    asyncio.run(write())
    return internal


def check(tmp_path: Path, *arguments: str) -> Result:
    config = tmp_path / "datasette.json"
    config.write_text(json.dumps(CONFIG))
    return CliRunner().invoke(
        cli, ["llm", "check", "--json", "-c", str(config), *arguments], catch_exceptions=False
    )


def test_check_with_internal_finds_a_stored_key_and_does_not_record_a_use(
    tmp_path: Path, store: Path
) -> None:
    result = check(tmp_path, "--internal", str(store))
    assert STORED not in result.output
    data = json.loads(result.output)
    [summaries] = data["purposes"]
    assert (summaries["model_id"], summaries["key"]["source"]) == ("test-keyed", "secret")
    assert data["errors"] == 0 and result.exit_code == 0  # only 'summaries' is unregistered
    assert audit(store) == (None, "earlier-user")


def test_check_without_the_store_says_the_purpose_cannot_be_served(
    tmp_path: Path, store: Path
) -> None:
    result = check(tmp_path)
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["problems"][0]["path"] == "plugins.datasette-llm.purposes.summaries"
    assert "set the secret STORED_KEY" in data["problems"][0]["message"]
