"""What mypy says: about code built on our API, and about a dependent's project once installed.

- Code that must not type-check, checked through mypy's API with the project's mypy.ini.
- Installing: a dependent's ``mypy --strict``, run as a subprocess from outside the repository,
  against environments made from this venv's site-packages with and without datasette-llm and
  the opt-in stubs distribution (``stubs/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent.parent

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
    "an_error_kind_misspelt": (
        """
        from datasette_llm import ProviderError

        ERROR = ProviderError("rate-limit", "gpt-5.4", "slow down")
        """,
        ["arg-type"],
    ),
    "fake_router_kind_misspelt": (
        """
        from datasette_llm.testing import FakeModelRouter

        def script(router: FakeModelRouter) -> None:
            router.add_exception(kind="rate-limit", model_id="gpt-5.4")
        """,
        ["arg-type"],
    ),
    "model_stand_in_returning_a_name": (
        """
        from datasette_llm import stand_in_for_models

        def stand_in(name: str, installed: llm.AsyncModel | None, /) -> str:
            return name

        SWITCH = stand_in_for_models(stand_in)
        """,
        ["arg-type"],
    ),
    "requires_given_a_string": (
        """
        async def pick(datasette: Datasette) -> None:
            await LLM(datasette).model(purpose="agent", requires="tools")
        """,
        ["arg-type"],
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


# Installing: what a dependent's mypy sees.

PURELIB = Path(sysconfig.get_path("purelib"))
OUR_STUBS = ("datasette-stubs", "datasette_secrets-stubs")
STUBS_DIST = "datasette_llm_stubs-"  # how the stubs distribution's files start in site-packages
DATASETTE_LLM = ("datasette_llm", "pytest_datasette_llm", "__editable__.datasette_llm-")

# A plugin that uses only datasette-llm's types: clean under --strict with no stubs installed.
PLUGIN = """\
from __future__ import annotations

from datasette_llm import LLM, Purpose
from datasette_llm.typing import Actor, Datasette, LlmDefaultModelHook, hookimpl

SUMMARIZE = Purpose(name="summarize", description="Summarize a row")


@hookimpl
def register_llm_purposes(datasette: Datasette) -> list[Purpose]:
    return [SUMMARIZE]


@hookimpl
def llm_default_model(datasette: Datasette, purpose: str | None, actor: Actor | None) -> str | None:
    return None


_: LlmDefaultModelHook = llm_default_model


async def summarize(datasette: Datasette, text: str) -> str:
    model = await LLM(datasette).model(purpose=SUMMARIZE)
    response = await model.prompt(text, system="One sentence")
    return await response.text()
"""

PLUGIN_WRONG = """\
from datasette_llm import LLM
from datasette_llm.typing import Datasette


async def pick(datasette: Datasette) -> None:
    await LLM(datasette).model(purpose=123)
"""

# A project that types against Datasette itself and has not opted in to our stubs.
DATASETTE_USER = """\
from datasette import hookimpl
from datasette.app import Datasette
from datasette_secrets import get_secret


@hookimpl
def startup(datasette: Datasette) -> None:
    datasette.no_such_method()


async def key(datasette: Datasette) -> str | None:
    return await get_secret(datasette, 42)
"""

# A project that opted in: clean under --strict with no ignores, and the stubs are what it sees.
OPTED_IN = """\
from __future__ import annotations

from datasette import Response, hookimpl
from datasette.app import Datasette
from datasette_secrets import Secret, get_secret

from datasette_llm import LLM


@hookimpl
def register_secrets(datasette: Datasette) -> list[Secret]:
    return [Secret(name="EXAMPLE_API_KEY", description="An example key")]


async def answer(datasette: Datasette) -> Response:
    key = await get_secret(datasette, "EXAMPLE_API_KEY")
    model = await LLM(datasette).model(purpose="summarize")
    text = await (await model.prompt("hi", key=key)).text()
    return Response.text(text)
"""

OPTED_IN_WRONG = """\
from datasette.app import Datasette
from datasette_secrets import get_secret


async def key(datasette: Datasette) -> str | None:
    return await get_secret(datasette, 42)
"""


def run(command: list[str]) -> str:
    """Run a setup command; fail the test with its output if it fails, else return its stdout."""
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def copy_source(source: Path, target: Path) -> Path:
    """Copy a source tree without build output or environments, so a build starts clean."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", ".venvs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(source, target, ignore=ignore)
    return target


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build datasette-llm's wheel and the stubs distribution's wheel, as pip would."""
    directory = tmp_path_factory.mktemp("wheels")
    main = copy_source(ROOT, directory / "datasette-llm")
    stubs = main / "stubs"
    out = directory / "out"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(out),
            str(main),
            str(stubs),
        ]
    )
    return {path.name.partition("-")[0]: path for path in out.glob("*.whl")}


def environment(
    directory: Path, *, without: tuple[str, ...], wheels: tuple[Path, ...] = ()
) -> Path:
    """Make a venv whose site-packages is this venv's, minus ``without``, plus ``wheels``.

    Returns the venv's python, for mypy's ``--python-executable``.
    """
    venv.create(directory, with_pip=False, symlinks=True)
    python = directory / "bin" / "python"
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    )
    for entry in PURELIB.iterdir():
        if not entry.name.startswith(without):
            (purelib / entry.name).symlink_to(entry)
    if wheels:
        install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
        run([*install, str(purelib), *map(str, wheels)])
    return python


def dependent_mypy(
    directory: Path, files: dict[str, str], python: Path = Path(sys.executable), *flags: str
) -> subprocess.CompletedProcess[str]:
    """Run a dependent's ``mypy --strict`` over ``files`` in ``directory``, outside the repo."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (directory / f"{name}.py").write_text(body)
    env = {key: value for key, value in os.environ.items() if key != "MYPYPATH"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            "",  # the dependent's defaults, not ours
            "--python-executable",
            str(python),
            "--cache-dir",
            str(directory / ".mypy_cache"),
            "--no-error-summary",
            "--hide-error-context",
            "--no-pretty",
            "--show-error-codes",
            *flags,
            *[f"{name}.py" for name in files],
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
    )


def error_codes(stdout: str) -> dict[str, list[str]]:
    """Return the error codes mypy reported, by file stem."""
    errors: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        match = ERROR.match(line)
        if match is not None:
            errors.setdefault(Path(match["file"]).stem, []).append(match["code"])
    return errors


def test_the_wheel_ships_only_datasette_llm_and_no_stubs(wheels: dict[str, Path]) -> None:
    names = zipfile.ZipFile(wheels["datasette_llm"]).namelist()
    top_level = {name.partition("/")[0] for name in names}
    assert [name for name in top_level if name.endswith("-stubs")] == []
    assert top_level == {
        "datasette_llm",
        "pytest_datasette_llm.py",
        wheels["datasette_llm"].name.removesuffix("-py3-none-any.whl") + ".dist-info",
    }
    packages = {name.rpartition("/")[0].replace("/", ".") for name in names if "/" in name}
    assert {"datasette_llm._operator", "datasette_llm.testing", "datasette_llm.templates"} <= (
        packages
    )


def test_the_stubs_wheel_ships_every_stub_as_a_pep_561_stub_package(
    wheels: dict[str, Path],
) -> None:
    names = set(zipfile.ZipFile(wheels["datasette_llm_stubs"]).namelist())
    expected = {
        str(path.relative_to(ROOT / "stubs")).replace(package, f"{package}-stubs", 1)
        for package in ("datasette", "datasette_secrets")
        for path in (ROOT / "stubs" / package).rglob("*")
        if path.suffix == ".pyi" or path.name == "py.typed"
    }
    assert expected - names == set()
    assert {name.partition("/")[0] for name in names} - {"datasette-stubs"} == {
        "datasette_secrets-stubs",
        wheels["datasette_llm_stubs"].name.removesuffix("-py3-none-any.whl") + ".dist-info",
    }


def test_an_editable_install_is_what_a_dependent_s_mypy_checks_against(tmp_path: Path) -> None:
    [installed] = [
        dist
        for dist in distributions(path=[str(PURELIB)])
        if dist.metadata["Name"] == "datasette-llm"
    ]
    direct_url = json.loads(installed.read_text("direct_url.json") or "{}")
    assert direct_url.get("dir_info", {}).get("editable"), (
        "These tests need datasette-llm installed editable: pip install -e '.[test]'"
    )
    assert direct_url["url"] == ROOT.as_uri()
    result = dependent_mypy(
        tmp_path, {"plugin": PLUGIN, "plugin_wrong": PLUGIN_WRONG}, Path(sys.executable), "-v"
    )
    assert error_codes(result.stdout) == {"plugin_wrong": ["arg-type"]}, result.stdout
    assert f"Parsing {ROOT / 'datasette_llm' / '__init__.py'} (datasette_llm)" in result.stderr


def test_installing_datasette_llm_does_not_change_what_mypy_says_about_datasette(
    tmp_path: Path, wheels: dict[str, Path]
) -> None:
    without = (*OUR_STUBS, STUBS_DIST, *DATASETTE_LLM)
    before = environment(tmp_path / "before", without=without)
    after = environment(tmp_path / "after", without=without, wheels=(wheels["datasette_llm"],))
    files = {"uses_datasette": DATASETTE_USER}
    checked_before = dependent_mypy(tmp_path / "check-before", files, before)
    checked_after = dependent_mypy(tmp_path / "check-after", files, after)
    assert checked_after.stdout == checked_before.stdout
    # Datasette is untyped, not our stubs: an import-untyped error, and no arg-type error.
    assert error_codes(checked_after.stdout)["uses_datasette"][:3] == ["import-untyped"] * 3
    assert "arg-type" not in checked_after.stdout
    # The plugin that uses only datasette-llm's types needs no stubs.
    plugin = dependent_mypy(tmp_path / "plugin", {"plugin": PLUGIN}, after)
    assert plugin.returncode == 0, plugin.stdout


def test_a_dependent_that_opts_in_to_the_stubs_is_strict_clean_with_no_ignores(
    tmp_path: Path, wheels: dict[str, Path]
) -> None:
    python = environment(
        tmp_path / "opted-in",
        without=(*OUR_STUBS, STUBS_DIST),
        wheels=(wheels["datasette_llm_stubs"],),
    )
    files = {"opted_in": OPTED_IN, "opted_in_wrong": OPTED_IN_WRONG}
    result = dependent_mypy(tmp_path / "check", files, python)
    assert "type: ignore" not in OPTED_IN
    assert error_codes(result.stdout) == {"opted_in_wrong": ["arg-type"]}, result.stdout
