"""``datasette llm purposes`` and ``datasette llm check``, run through Click's runner."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner, Result
from datasette.cli import cli
from syrupy.assertion import SnapshotAssertion

from datasette_llm import Purpose
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import RegisterPlugin
from tests.llm_models import TestModelsPlugin

PURPOSES: Final = [
    Purpose(
        "enrichments",
        owner="datasette-enrichments-llm",
        description="Run a prompt against every row of a table",
        default_model="test-b",
    ),
    Purpose("extract", owner="datasette-extract", default_model="test-keyed-2"),
    Purpose("agent", owner="datasette-agent"),
]

CONFIG: Final = """
plugins:
  datasette-llm:
    default_model: test-a
    blocked_models: [test-fails]
    purposes:
      enrichments:
        model: {model: test-keyed, key: ENRICHMENTS_KEY}
        models: [test-keyed, test-b]
      agent:
        model: test-fails
      enrichment:
        model: test-c
"""


class CliPurposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return PURPOSES


@pytest.fixture(autouse=True)
def purposes(
    test_models: TestModelsPlugin,
    register_plugin: RegisterPlugin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_ENRICHMENTS_KEY", "sk-never-printed")
    register_plugin(CliPurposes())


def run(tmp_path: Path, *args: str, config: str | None = CONFIG) -> Result:
    arguments = list(args)
    if config is not None:
        path = tmp_path / "datasette.yaml"
        path.write_text(config)
        arguments += ["-c", str(path)]
    return CliRunner().invoke(cli, arguments, catch_exceptions=False)


def test_purposes_prints_a_table_of_every_purpose_and_its_route(
    tmp_path: Path, snapshot: SnapshotAssertion
) -> None:
    result = run(tmp_path, "llm", "purposes")
    assert result.exit_code == 0, result.output
    assert "sk-never-printed" not in result.output
    assert result.output == snapshot


def test_purposes_json_is_the_routing_report(tmp_path: Path, snapshot: SnapshotAssertion) -> None:
    result = run(tmp_path, "llm", "purposes", "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    assert data.pop("installed_model_count") >= 6  # depends on the llm plugins installed
    assert data == snapshot


def test_purposes_reads_plugin_configuration_from_metadata_too(tmp_path: Path) -> None:
    metadata = tmp_path / "metadata.yaml"
    metadata.write_text(CONFIG)
    result = run(tmp_path, "llm", "purposes", "--json", "-m", str(metadata), config=None)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["default_model"] == "test-a"


def test_purposes_with_a_malformed_configuration_lists_the_problems_and_exits_1(
    tmp_path: Path,
) -> None:
    config = "plugins:\n  datasette-llm:\n    default_model: 5\n    purpose: {}\n"
    result = run(tmp_path, "llm", "purposes", config=config)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: plugins.datasette-llm.purpose: unknown key 'purpose'. Did you mean 'purposes'? "
        "Valid keys here: default_model, models, blocked_models, require_keys, purposes, strict, "
        "fallbacks, retries, timeout, deadline, fallback_on, max_wait, pricing, usage, "
        "coordination.",
        "error: plugins.datasette-llm.default_model: expected a model id string or a mapping "
        "{model: ID, key: SECRET_NAME, options: {...}}, got int: 5.",
        "2 errors, 0 warnings",
    ]


def test_check_with_a_clean_configuration_says_so_and_exits_0(tmp_path: Path) -> None:
    config = "plugins:\n  datasette-llm:\n    default_model: test-a\n"
    result = run(tmp_path, "llm", "check", config=config)
    assert (result.exit_code, result.output) == (
        0,
        "datasette-llm configuration OK: no problems found.\n",
    )


def test_check_with_only_warnings_lists_them_and_exits_0(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "check")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "warning: plugins.datasette-llm.purposes.enrichment: no installed plugin registers the "
        "purpose 'enrichment'. Did you mean 'enrichments'? Registered purposes: agent, "
        "enrichments, extract.",
        "warning: plugins.datasette-llm.purposes.agent.model: 'test-fails' is blocked for "
        "purpose 'agent' (it is in blocked_models), so it is never used. Remove it from the "
        "blocklist or choose another model.",
        "0 errors, 2 warnings",
    ]


@pytest.mark.parametrize(
    ("flag", "config"),
    [
        ("--strict", CONFIG),
        (None, CONFIG.replace("default_model:", "strict: true\n    default_model:")),
    ],
)
def test_check_under_strict_fails_on_warnings(
    tmp_path: Path, flag: str | None, config: str
) -> None:
    result = run(tmp_path, "llm", "check", *([flag] if flag else []), config=config)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "2 errors, 0 warnings (strict: warnings count as errors)"
    )


def test_check_fails_on_options_the_model_rejects_naming_the_path(tmp_path: Path) -> None:
    config = (
        "plugins:\n  datasette-llm:\n    default_model: test-a\n    purposes:\n"
        "      enrichments:\n        models:\n"
        "          - test-a\n          - {model: test-b, options: {temprature: 2}}\n"
    )
    result = run(tmp_path, "llm", "check", config=config)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "error: plugins.datasette-llm.purposes.enrichments.models[1].options.temprature: "
        "'test-b' does not accept the option 'temprature'. Did you mean 'temperature'? "
        "Options it accepts: temperature (float or none), style (str or none).",
        "1 error, 0 warnings",
    ]


def test_check_reports_an_unreadable_configuration_file(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "check", config="plugins: [unclosed")
    assert result.exit_code == 1
    assert "Could not parse configuration" in result.output


def test_check_fails_when_a_configured_model_is_not_installed(tmp_path: Path) -> None:
    config = (
        "plugins:\n  datasette-llm:\n    purposes:\n      enrichments:\n        model: test-aa\n"
    )
    result = run(tmp_path, "llm", "check", config=config)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == (
        "error: plugins.datasette-llm.purposes.enrichments: purpose 'enrichments' cannot be "
        "served: Unknown model: test-aa. Run 'llm models' to list installed models, or install "
        "the llm plugin that provides it."
    )
    assert (
        "warning: plugins.datasette-llm.purposes.enrichments.model: model 'test-aa' is not "
        "installed. Did you mean 'test-a'?"
    ) in result.output


def test_check_fails_when_a_registered_purpose_has_no_model_with_a_key(tmp_path: Path) -> None:
    # extract recommends test-keyed-2 (no key) and nothing else is configured
    config = "plugins:\n  datasette-llm:\n    purposes:\n      agent:\n        model: test-a\n"
    result = run(tmp_path, "llm", "check", config=config)
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "error: plugins.datasette-llm.purposes.extract: purpose 'extract' cannot be served: No "
        "model could be routed for purpose 'extract': every candidate was refused."
    )
    assert "sk-" not in result.output


KEYLESS: Final = (
    "plugins:\n  datasette-llm:\n    default_model: test-a\n    purposes:\n"
    "      extract:\n        model: test-keyed\n"
)


def test_check_warns_when_a_configured_model_without_a_key_is_passed_over(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, "llm", "check", config=KEYLESS)
    assert (result.exit_code, result.output.splitlines()) == (
        0,
        [
            "warning: plugins.datasette-llm.purposes.extract.model: 'test-keyed' has no API key, "
            "so calls for purpose 'extract' go to 'test-a' instead. Set the secret "
            "TESTPROV_API_KEY (datasette-secrets, or the environment variable "
            "DATASETTE_SECRETS_TESTPROV_API_KEY), or configure another model.",
            "0 errors, 1 warning",
        ],
    )
    assert run(tmp_path, "llm", "check", "--strict", config=KEYLESS).exit_code == 1


def test_check_without_require_keys_accepts_a_model_without_a_key(tmp_path: Path) -> None:
    config = KEYLESS.replace("default_model:", "require_keys: false\n    default_model:")
    result = run(tmp_path, "llm", "check", config=config)
    assert (result.exit_code, result.output) == (
        0,
        "datasette-llm configuration OK: no problems found.\n",
    )


def test_check_json_lists_problems_and_every_purposes_route(tmp_path: Path) -> None:
    config = KEYLESS + "      enrichments:\n        model: test-aa\n"
    result = run(tmp_path, "llm", "check", "--json", config=config)
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert {key: data[key] for key in ("ok", "strict", "errors", "warnings")} == {
        "ok": False,
        "strict": False,
        "errors": 1,
        "warnings": 2,
    }
    assert [(p["severity"], p["path"]) for p in data["problems"]] == [
        ("error", "plugins.datasette-llm.purposes.enrichments"),
        ("warning", "plugins.datasette-llm.purposes.enrichments.model"),
        ("warning", "plugins.datasette-llm.purposes.extract.model"),
    ]
    routes = {purpose["name"]: purpose for purpose in data["purposes"]}
    assert list(routes) == ["enrichments", "extract", "agent"]
    assert routes["enrichments"]["model_id"] is None
    assert routes["enrichments"]["error"].startswith("Unknown model: test-aa.")
    assert (routes["extract"]["model_id"], routes["extract"]["step"]) == ("test-a", "default_model")
    assert routes["extract"]["registered"] is True
    assert data["default_resolved"]["model_id"] == "test-a"


def test_check_json_under_strict_counts_warnings_as_errors(tmp_path: Path) -> None:
    result = run(tmp_path, "llm", "check", "--json", "--strict", config=KEYLESS)
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert (data["ok"], data["strict"], data["errors"], data["warnings"]) == (False, True, 1, 0)
    assert data["problems"][0]["severity"] == "error"


def test_check_json_with_a_malformed_configuration_has_no_routes(tmp_path: Path) -> None:
    result = run(
        tmp_path, "llm", "check", "--json", config="plugins:\n  datasette-llm:\n    modls: []\n"
    )
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert (data["ok"], data["purposes"], data["default_resolved"]) == (False, None, None)
    assert data["problems"][0]["path"] == "plugins.datasette-llm.modls"


def test_check_json_with_a_clean_configuration_is_ok_and_exits_0(tmp_path: Path) -> None:
    config = "plugins:\n  datasette-llm:\n    default_model: test-a\n"
    result = run(tmp_path, "llm", "check", "--json", config=config)
    assert result.exit_code == 0
    assert json.loads(result.output)["ok"] is True


def test_check_lists_every_unregistered_purpose_that_startup_would_summarize(
    tmp_path: Path,
) -> None:
    names = [f"unknown-{index}" for index in range(5)]
    config = "plugins:\n  datasette-llm:\n    default_model: test-a\n    purposes:\n" + "".join(
        f"      {name}: {{}}\n" for name in names
    )
    result = run(tmp_path, "llm", "check", config=config)
    assert result.exit_code == 0
    assert [line.split(": ")[1] for line in result.output.splitlines()[:-1]] == [
        f"plugins.datasette-llm.purposes.{name}" for name in names
    ]


def test_check_fails_on_a_usage_database_that_is_not_attached_and_passes_with_its_file(
    tmp_path: Path,
) -> None:
    config = "plugins:\n  datasette-llm:\n    default_model: test-a\n    usage: {database: usage}\n"
    result = run(tmp_path, "llm", "check", config=config)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "error: plugins.datasette-llm.usage.database: no attached database is named 'usage'. "
        "Attached databases: _memory. Name one of them, attach its file (datasette serve "
        "FILE.db, datasette llm check FILE.db), or leave database out to keep usage in "
        "Datasette's internal database.",
        "1 error, 0 warnings",
    ]
    database = tmp_path / "usage.db"
    sqlite3.connect(database).close()
    result = run(tmp_path, "llm", "check", str(database), config=config)
    assert (result.exit_code, result.output) == (
        0,
        "datasette-llm configuration OK: no problems found.\n",
    )
    typo = config.replace("{database: usage}", "{database: usgae}")
    result = run(tmp_path, "llm", "check", str(database), config=typo)
    assert result.exit_code == 1
    assert "no attached database is named 'usgae'. Did you mean 'usage'? Attached databases: " in (
        result.output
    )


def test_check_with_an_internal_database_not_created_yet_reads_it_as_empty(
    tmp_path: Path,
) -> None:
    # A deploy pipeline checks before the first datasette serve has made the file.
    missing = tmp_path / "internal.db"
    without = run(tmp_path, "llm", "check", "--json")
    result = run(tmp_path, "llm", "check", "--json", "--internal", str(missing))
    assert result.exit_code == without.exit_code, result.output
    assert json.loads(result.stdout) == json.loads(without.stdout)
    assert "does not exist yet: read as an empty internal database" in result.stderr
    assert not missing.exists()


def test_usage_of_an_internal_database_not_created_yet_names_it_as_the_ledgers_source(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "internal.db"
    result = run(tmp_path, "llm", "usage", "--internal", str(missing))
    assert result.exit_code == 0, result.output
    assert (
        f"holds the rows of every process started with --internal {missing}: none yet, since "
        "that file does not exist yet." in result.stdout
    )
    assert "started without --internal" not in result.stdout
    assert not missing.exists()
