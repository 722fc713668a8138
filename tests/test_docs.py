"""The README documents every public name and every hook with its signature."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def reference_lines() -> list[str]:
    path = ROOT / "scripts" / "api_reference.py"
    spec = importlib.util.spec_from_file_location("api_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines: list[str] = module.reference()
    return [line.strip() for line in lines if line.strip().startswith("- ")]


@pytest.mark.parametrize("line", reference_lines())
def test_readme_documents_public_name_with_signature(line: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert line in readme, (
        f"README.md does not document {line!r}. Run `python scripts/api_reference.py` and "
        "update the reference section of the README."
    )
