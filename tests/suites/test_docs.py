"""The documentation tells the truth: it is current, its links resolve and its code works.

- ``docs/reference.md`` is what ``scripts/api_reference.py`` writes from the code (every public
  name and hook, with its signature);
- every relative link in ``README.md`` and ``docs/`` resolves;
- every ``python`` block type-checks under ``mypy --strict`` (the project's ``mypy.ini``), and
  every block that does not import Datasette itself also without our stubs;
- every ``console`` example of a ``datasette llm`` command prints what it shows;
- no page holds a machine path or a dated run;
- every module ``docs/architecture.md`` names exists, and it names every module.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from mypy import api

ROOT: Final = Path(__file__).resolve().parent.parent.parent
PAGES: Final = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK: Final = re.compile(r"^```(?P<language>\w+)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
LINK: Final = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def blocks(language: str) -> list[tuple[str, str]]:
    """Return ``(where, body)`` for every fenced block of ``language`` in the pages."""
    found: list[tuple[str, str]] = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            if match["language"] == language:
                found.append((f"{page.relative_to(ROOT)}#{number}", match["body"]))
    return found


def test_the_reference_is_what_the_code_says() -> None:
    path = ROOT / "scripts" / "api_reference.py"
    spec = importlib.util.spec_from_file_location("api_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = (ROOT / "docs" / "reference.md").read_text()
    assert written == module.document(), (
        "docs/reference.md is out of date: run `python scripts/api_reference.py --write`."
    )


def test_the_only_any_in_a_public_signature_is_what_passes_through_to_llm() -> None:
    """docs/typing.md says so; the reference is every public signature (the test above)."""
    reference = (ROOT / "docs" / "reference.md").read_text()
    passed_through = re.sub(r"\*\*kwargs: Any|kwargs: dict\[str, Any\]", "", reference)
    lines = [line for line in passed_through.splitlines() if re.search(r"\bAny\b", line)]
    assert not lines, "\n".join(lines)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    for match in LINK.finditer(page.read_text()):
        target = match["target"].partition("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_holds_a_machine_path_or_a_dated_run(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"(?<![\w.])/(work|tmp|root|home)/", text), "a machine path"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a dated run"


def test_every_python_block_type_checks(tmp_path: Path) -> None:
    files = []
    for index, (where, body) in enumerate(blocks("python")):
        path = tmp_path / f"block_{index}.py"
        path.write_text(f"# {where}\n{body}")
        files.append(path)
    assert len(files) >= 8
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # mypy.ini's mypy_path (our stubs) is relative
        stdout, _, status = api.run(
            ["--config-file", str(ROOT / "mypy.ini"), "--no-error-summary", *map(str, files)]
        )
    places = {f"block_{index}.py": place for index, (place, _) in enumerate(blocks("python"))}
    for name, place in places.items():
        stdout = stdout.replace(name, place)
    assert status == 0, stdout


# A block that imports Datasette or datasette-secrets itself needs our opt-in stubs: only
# docs/typing.md, which shows them, has such blocks. Every other block is what a plugin author
# writes with datasette-llm alone (``Datasette`` from ``datasette_llm.typing``).
OWN_IMPORT: Final = re.compile(r"^\s*(from|import) datasette(_secrets)?\b(?!_llm)", re.MULTILINE)


def test_every_block_typed_against_us_alone_type_checks_without_our_stubs(tmp_path: Path) -> None:
    """The README's promise: a plugin built on datasette-llm passes ``mypy --strict`` with
    nothing else installed. Our stubs are not on this run's path."""
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.10\nstrict = true\n"
        "enable_error_code = ignore-without-code, redundant-expr, truthy-bool\n"
        "[mypy-llm_echo.*]\nignore_missing_imports = true\n"
    )
    files, places, stubbed = [], {}, []
    for index, (where, body) in enumerate(blocks("python")):
        if OWN_IMPORT.search(body):
            stubbed.append(where)
            continue
        path = tmp_path / f"alone_{index}.py"
        path.write_text(f"# {where}\n{body}")
        files.append(path)
        places[path.name] = where
    assert len(files) >= 8
    outside = [where for where in stubbed if not where.startswith("docs/typing.md#")]
    assert not outside, f"import Datasette from datasette_llm.typing in {outside}"
    stdout, _, status = api.run(
        ["--config-file", str(config), "--no-error-summary", *map(str, files)]
    )
    for name, place in places.items():
        stdout = stdout.replace(name, place)
    assert status == 0, stdout


def console_examples() -> list[tuple[str, str, str]]:
    """Return ``(where, command, output)`` for every ``$ ... datasette llm`` example."""
    examples = []
    for where, body in blocks("console"):
        command, _, output = body.partition("\n")
        if command.startswith("$ ") and re.search(r"(^|[ /])datasette llm ", command[2:]):
            examples.append((where, command[2:], output))
    return examples


@pytest.mark.parametrize(("where", "command", "output"), console_examples())
def test_every_cli_example_prints_what_it_shows(where: str, command: str, output: str) -> None:
    program, _, arguments = command.partition(" llm ")
    assert program.endswith("datasette"), where
    result = subprocess.run(
        [sys.executable, "-m", "datasette", "llm", *arguments.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.stdout == output, f"{where}: {result.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_test_a_page_names_exists(page: Path) -> None:
    for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", page.read_text()):
        source = (ROOT / path).read_text()
        assert f"def {name}(" in source, f"{page.name} names {path}::{name}, which does not exist"


def test_every_module_the_architecture_page_names_exists() -> None:
    """docs/architecture.md names modules as ``layer/module.py`` (or bare, in its layer's row)."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "datasette_llm"
    named = set(re.findall(r"`((?:tests/)?[\w/]+\.py)`", page))
    assert len(named) > 30, "docs/architecture.md names too few modules to be a map"
    missing = []
    for path in sorted(named):
        if path.startswith("tests/"):
            found = (ROOT / path).exists()
        else:
            found = (package / path).exists() or any(package.glob(f"*/{path}"))
        if not found:
            missing.append(path)
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_the_architecture_page_lists_every_module_of_the_package() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "datasette_llm"
    unlisted = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in page
    ]
    assert not unlisted, f"docs/architecture.md does not name: {unlisted}"
