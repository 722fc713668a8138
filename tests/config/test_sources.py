"""datasette-llm configured in both datasette.yaml and metadata: never silently half-applied.

Datasette moves metadata's ``plugins:`` into its configuration by replacing the whole mapping,
so a datasette-llm section in datasette.yaml disappears. The ``datasette llm`` commands refuse
to run; ``datasette serve`` warns at startup. Both name the two files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner, Result
from datasette.cli import cli

from tests.llm_models import TestModelsPlugin

CONFIG: Final = """
plugins:
  datasette-llm:
    default_model: test-a
    blocked_models: [test-fails]
permissions:
  llm-view-routing:
    id: alice
"""
METADATA: Final = """
title: A demo
plugins:
  datasette-llm:
    default_model: test-b
"""


@pytest.fixture
def files(tmp_path: Path, test_models: TestModelsPlugin) -> tuple[str, str]:
    config = tmp_path / "datasette.yaml"
    config.write_text(CONFIG)
    metadata = tmp_path / "metadata.yaml"
    metadata.write_text(METADATA)
    return str(config), str(metadata)


def invoke(*arguments: str) -> Result:
    return CliRunner().invoke(cli, list(arguments), catch_exceptions=False)


def expected(config: str, metadata: str, both: bool = True) -> str:
    where = (
        f"is configured in both {config} and {metadata}"
        if both
        else f"is configured in {config}, and {metadata} has a plugins: section too"
    )
    return (
        f"plugins.datasette-llm {where}: Datasette keeps only the plugins: section of "
        f"{metadata}, so the datasette-llm settings in {config} (its blocklists included) are "
        f"ignored. Move the plugins: section of {metadata} into {config}, under one "
        "plugins.datasette-llm."
    )


@pytest.mark.parametrize("command", ["check", "purposes"])
def test_the_llm_commands_refuse_a_configuration_in_both_files_naming_both(
    files: tuple[str, str], command: str
) -> None:
    config, metadata = files
    result = invoke("llm", command, "-c", config, "-m", metadata)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {expected(config, metadata)}\n"


def test_the_llm_commands_refuse_metadata_plugins_that_would_replace_ours(
    files: tuple[str, str], tmp_path: Path
) -> None:
    config, _ = files
    metadata = tmp_path / "other.yaml"
    metadata.write_text("plugins:\n  datasette-cluster-map:\n    latitude_column: lat\n")
    result = invoke("llm", "check", "-c", config, "-m", str(metadata))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {expected(config, str(metadata), both=False)}\n"


def test_the_llm_commands_accept_metadata_without_plugins(
    files: tuple[str, str], tmp_path: Path
) -> None:
    config, _ = files
    metadata = tmp_path / "plain.yaml"
    metadata.write_text("title: Plain\n")
    result = invoke("llm", "check", "-c", config, "-m", str(metadata))
    assert (result.exit_code, result.output) == (
        0,
        "datasette-llm configuration OK: no problems found.\n",
    )


def test_serve_warns_at_startup_naming_both_files(
    files: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    config, metadata = files
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        result = invoke(
            "serve",
            "--get",
            "/-/llm.json",
            "--actor",
            '{"id": "alice"}',
            "-c",
            config,
            "-m",
            metadata,
        )
    assert result.exit_code == 0, result.output
    assert [record.getMessage() for record in caplog.records] == [
        f"datasette-llm configuration: {expected(config, metadata)}"
    ]
    report = json.loads(result.stdout)
    # What the warning is about: the datasette.yaml blocklist is gone, metadata's section won.
    assert (report["default_model"], report["blocked_models"]) == ("test-b", [])


def test_serve_with_one_source_does_not_warn(
    files: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = files
    with caplog.at_level(logging.WARNING, logger="datasette_llm"):
        result = invoke("serve", "--get", "/-/llm.json", "--actor", '{"id": "alice"}', "-c", config)
    assert result.exit_code == 0, result.output
    assert caplog.records == []
    assert json.loads(result.stdout)["blocked_models"] == ["test-fails"]
