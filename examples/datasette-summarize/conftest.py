"""Fixtures for datasette-summarize's tests: the plugin registered, a Datasette with a table."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasette_summarize
import pytest
from datasette.app import Datasette
from datasette.plugins import pm

MakeDatasette = Callable[..., Datasette]

CONFIG: dict[str, Any] = {
    "purposes": {
        "summarize": {"model": "gpt-5.4-mini"},
        "summarize-rows": {"model": {"model": "claude-haiku", "options": {"temperature": 0}}},
    }
}
"""How the operator routes this plugin's purposes in most tests."""


@pytest.fixture
def plugin() -> Iterator[None]:
    """Register datasette-summarize with Datasette for one test (it is not pip-installed)."""
    pm.register(datasette_summarize, name="datasette-summarize")
    try:
        yield
    finally:
        pm.unregister(name="datasette-summarize")


@pytest.fixture
def make_datasette(plugin: None, tmp_path: Path) -> MakeDatasette:
    """Build a Datasette serving ``reviews.db`` with a datasette-llm configuration.

    ``make()`` uses ``CONFIG``; ``make(None)`` configures nothing, so routing falls back to
    each purpose's ``default_model``.
    """
    path = tmp_path / "reviews.db"
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("create table reviews (title text, body text)")
        connection.executemany(
            "insert into reviews values (?, ?)",
            [("Great", "Loved every page."), ("Meh", "It was fine, I suppose.")],
        )
    connection.close()

    def make(llm_config: dict[str, Any] | None = CONFIG) -> Datasette:
        config = {"plugins": {"datasette-llm": llm_config}} if llm_config is not None else {}
        return Datasette([str(path)], config=config)

    return make
