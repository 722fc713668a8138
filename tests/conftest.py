"""Shared fixtures: an isolated llm user dir, test models, a Datasette factory, plugin helpers."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

for _variable in list(os.environ):
    if _variable.startswith("DATASETTE_SECRETS_") or _variable in (
        "OPENAI_API_KEY",
        "LLM_ECHO_NEEDS_KEY_KEY",
    ):
        del os.environ[_variable]
os.environ["LLM_USER_PATH"] = tempfile.mkdtemp(prefix="datasette-llm-tests-")

import pytest  # noqa: E402
from datasette.app import Datasette  # noqa: E402
from datasette.plugins import pm  # noqa: E402

from tests.llm_models import BrokenModel, BrokenPlugin, TestModelsPlugin  # noqa: E402

RegisterPlugin = Callable[..., object]
MakeDatasette = Callable[..., Datasette]


@pytest.fixture(autouse=True)
def llm_user_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Give every test its own llm user directory (aliases.json, keys.json)."""
    directory = tmp_path / "llm-user"
    directory.mkdir()
    monkeypatch.setenv("LLM_USER_PATH", str(directory))
    yield directory


@pytest.fixture
def broken(test_models: TestModelsPlugin) -> Iterator[None]:
    """Register ``test-broken`` too: a keyless model whose provider fails with a server error
    while ``BrokenModel.failing`` (see tests/llm_models.py), which is reset after the test."""
    import llm

    llm.plugins.pm.register(BrokenPlugin(), name="datasette-llm-test-broken")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-broken")
        BrokenModel.failing = True


@pytest.fixture
def test_models() -> Iterator[TestModelsPlugin]:
    """Register the test suite's own llm models (see tests/llm_models.py)."""
    import llm

    plugin = TestModelsPlugin()
    llm.plugins.pm.register(plugin, name="datasette-llm-test-models")
    try:
        yield plugin
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-models")


@pytest.fixture
def register_plugin() -> Iterator[RegisterPlugin]:
    """Register objects with Datasette's plugin manager for one test."""
    names: list[str] = []

    def register(plugin: object, name: str | None = None) -> object:
        plugin_name = name or f"test-plugin-{len(names)}-{id(plugin)}"
        pm.register(plugin, name=plugin_name)
        names.append(plugin_name)
        return plugin

    try:
        yield register
    finally:
        for plugin_name in reversed(names):
            pm.unregister(name=plugin_name)


@contextmanager
def registered(hooks: Sequence[object], prefix: str) -> Iterator[None]:
    """Register ``hooks`` with Datasette's plugin manager for the block (one hypothesis example)."""
    names: list[str] = []
    try:
        for index, hook in enumerate(hooks):
            pm.register(hook, name=f"{prefix}-{index}")
            names.append(f"{prefix}-{index}")
        yield
    finally:
        for name in names:
            pm.unregister(name=name)


@pytest.fixture
def make_datasette() -> MakeDatasette:
    """Build a real Datasette with the given datasette-llm plugin configuration."""

    def make(llm_config: dict[str, Any] | None = None, **extra: Any) -> Datasette:
        config: dict[str, Any] = dict(extra.pop("config", {}) or {})
        if llm_config is not None:
            config.setdefault("plugins", {})["datasette-llm"] = llm_config
        return Datasette(memory=True, config=config, **extra)

    return make


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop, for hypothesis tests that run many async examples in one test."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.close()
