"""Models this test suite registers through llm's ``register_models`` hook."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import llm
from pydantic import Field


class _Options(llm.Options):
    temperature: float | None = Field(default=None)
    style: str | None = Field(default=None)


def _reply(prompt: llm.Prompt, model_id: str, key: str | None) -> str:
    options = {
        name: value for name, value in prompt.options.model_dump().items() if value is not None
    }
    parts = [f"{model_id}:{prompt.prompt}"]
    if prompt.system:
        parts.append(f"system={prompt.system}")
    if options:
        parts.append(f"options={sorted(options.items())}")
    if key is not None:
        parts.append(f"key-length={len(key)}")
    return " ".join(parts)


class SyncStub(llm.Model):
    """llm needs a sync model beside each async one; ours is never called."""

    def __init__(self, model_id: str, needs_key: str | None = None) -> None:
        self.model_id = model_id
        self.needs_key = needs_key

    def execute(self, prompt: Any, stream: Any, response: Any, conversation: Any) -> Any:
        raise NotImplementedError("tests only use async models")


class FreeModel(llm.AsyncModel):
    """A keyless model that answers ``<model_id>:<prompt>`` in two chunks."""

    class Options(_Options):
        pass

    can_stream = True

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        text = _reply(prompt, self.model_id, None)
        response.set_usage(input=len(prompt.prompt or ""), output=len(text))
        middle = len(text) // 2
        yield text[:middle]
        yield text[middle:]


class ServerErrorModel(FreeModel):
    """A keyless model whose provider always fails with a server error (``ProviderError``, 500).

    Mix it in before another ``FreeModel`` subclass to make that model's provider fail too.
    """

    async def execute(
        self, prompt: Any, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        from datasette_llm import ProviderError

        if prompt is not None:  # always: an async generator, as llm expects, failing at once
            raise ProviderError("server_error", self.model_id, "the provider broke", status=500)
        yield ""


class BrokenModel(ServerErrorModel):
    """``test-broken``: a keyless model whose provider answers with a server error while
    ``failing`` (a class attribute: set it to ``False`` for a provider that has recovered)."""

    failing = True

    def __init__(self, model_id: str = "test-broken") -> None:
        super().__init__(model_id)

    async def execute(
        self, prompt: Any, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        answer = ServerErrorModel if self.failing else FreeModel
        async for chunk in answer.execute(self, prompt, stream, response, conversation):
            yield chunk


class BrokenPlugin:
    """Registers ``test-broken`` (``BrokenModel``)."""

    __test__ = False

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-broken"), BrokenModel())


class KeyedModel(llm.AsyncKeyModel):
    """A model that needs a key for provider ``testprov``."""

    class Options(_Options):
        pass

    can_stream = True
    needs_key = "testprov"
    key_env_var = "TESTPROV_KEY"

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def execute(
        self,
        prompt: llm.Prompt,
        stream: bool,
        response: Any,
        conversation: Any,
        key: str | None,
    ) -> AsyncGenerator[str, None]:
        yield _reply(prompt, self.model_id, key)


class FailingModel(llm.AsyncModel):
    """A keyless model that fails after its first chunk."""

    can_stream = True

    def __init__(self, model_id: str = "test-fails") -> None:
        self.model_id = model_id

    async def execute(
        self, prompt: llm.Prompt, stream: bool, response: Any, conversation: Any
    ) -> AsyncGenerator[str, None]:
        yield "partial"
        raise RuntimeError("the provider failed mid-stream")


FREE_IDS = ("test-a", "test-b", "test-c")
KEYED_IDS = ("test-keyed", "test-keyed-2")


class TestModelsPlugin:
    """Registers test-a, test-b, test-c (keyless), test-keyed, test-keyed-2, test-fails."""

    __test__ = False

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        for model_id in FREE_IDS:
            register(SyncStub(model_id), FreeModel(model_id))
        for model_id in KEYED_IDS:
            register(SyncStub(model_id, "testprov"), KeyedModel(model_id))
        register(SyncStub("test-fails"), FailingModel())
