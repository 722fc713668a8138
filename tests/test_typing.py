"""Code that must not type-check, checked through mypy's API with the project's mypy.ini."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent

HEADER = """\
from __future__ import annotations

import llm

from datasette_llm import LLM, Purpose, Resolution
from datasette_llm.typing import Actor, Datasette, LlmDefaultModelHook, LlmDefaultModelResult
from datasette_llm.typing import hookimpl
"""

# Each snippet is one file; the value is the error codes mypy must report for it, in order.
SNIPPETS: dict[str, tuple[str, list[str]]] = {
    "purpose_with_a_wrong_field_type": (
        'PURPOSE = Purpose(name="summarize", description=42)',
        ["arg-type"],
    ),
    "purpose_given_an_int": (
        """
        async def pick(datasette: Datasette) -> None:
            await LLM(datasette).model(purpose=1)
        """,
        ["arg-type"],
    ),
    "hook_returning_the_wrong_type_checked_by_protocol": (
        """
        @hookimpl
        def llm_default_model(
            datasette: Datasette, purpose: str | None, actor: Actor | None
        ) -> int:
            return 42

        _: LlmDefaultModelHook = llm_default_model
        """,
        ["assignment"],
    ),
    "hook_with_a_misnamed_argument_checked_by_protocol": (
        """
        @hookimpl
        def llm_default_model(
            datasette: Datasette, purpose_name: str | None, actor: Actor | None
        ) -> str | None:
            return None

        _: LlmDefaultModelHook = llm_default_model
        """,
        ["assignment"],
    ),
    "hook_returning_the_wrong_type_checked_by_result_alias": (
        """
        @hookimpl
        def llm_default_model(purpose: str | None) -> LlmDefaultModelResult:
            return 42
        """,
        ["return-value"],
    ),
    "resolution_attribute_that_does_not_exist": (
        """
        def describe(resolution: Resolution) -> None:
            print(resolution.model)
        """,
        ["attr-defined"],
    ),
    "resolution_is_frozen": (
        """
        def change(resolution: Resolution) -> None:
            resolution.model_id = "gpt-4"
        """,
        ["misc"],
    ),
    "prompt_returns_a_response_not_text": (
        """
        async def ask(datasette: Datasette) -> str:
            model = await LLM(datasette).model(purpose="summarize")
            text: str = await model.prompt("hi")
            return text
        """,
        ["assignment"],
    ),
    "models_are_llm_async_models": (
        """
        async def first(datasette: Datasette) -> llm.Model:
            return (await LLM(datasette).models())[0]
        """,
        ["return-value"],
    ),
    "correct_code_passes": (
        """
        @hookimpl
        def llm_default_model(
            datasette: Datasette, purpose: str | None, actor: Actor | None
        ) -> str | None:
            return None

        _: LlmDefaultModelHook = llm_default_model

        async def ask(datasette: Datasette, resolution: Resolution) -> str:
            model = await LLM(datasette).model(purpose=Purpose(name="summarize"))
            return await (await model.prompt("hi")).text() + resolution.model_id
        """,
        [],
    ),
}

ERROR = re.compile(r"^(?P<file>[^:]+\.py):\d+: error: .*\[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Run mypy once over every snippet; return the error codes reported for each file."""
    directory = tmp_path_factory.mktemp("typing-snippets")
    for name, (body, _) in SNIPPETS.items():
        (directory / f"{name}.py").write_text(HEADER + "\n" + textwrap.dedent(body))
    # mypy.ini's mypy_path (our stubs) is relative to the working directory.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        stdout, stderr, _ = api.run(
            [
                "--config-file",
                str(ROOT / "mypy.ini"),
                "--cache-dir",
                str(ROOT / ".mypy_cache"),
                "--no-error-summary",
                "--hide-error-context",
                "--no-pretty",
                "--show-error-codes",
                *[str(path) for path in sorted(directory.glob("*.py"))],
            ]
        )
    assert not stderr, stderr
    errors: dict[str, list[str]] = {name: [] for name in SNIPPETS}
    for line in stdout.splitlines():
        match = ERROR.match(line)
        if match is not None:
            errors[Path(match["file"]).stem].append(match["code"])
    return errors


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_mypy_reports_exactly_the_expected_error_codes(
    name: str, mypy_errors: dict[str, list[str]]
) -> None:
    assert mypy_errors[name] == SNIPPETS[name][1]


def test_every_datasette_llm_package_is_listed_in_pyproject() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'^\s+"([\w.-]+)",$', pyproject, re.MULTILINE))
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "datasette_llm").rglob("__init__.py")
    }
    assert found - listed == set(), (
        "Add these packages to [tool.setuptools] packages in pyproject.toml: "
        f"{sorted(found - listed)}"
    )
