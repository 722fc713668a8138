"""A plugin of ``llm_prompt_context`` and ``llm_group_exit`` that writes down what it sees."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from datasette_llm import Actor, Group, PromptResult
from datasette_llm.typing import hookimpl

Describe = Callable[[str, str, "str | None"], tuple[str, str]]
"""Given ``(model_id, prompt, purpose)``, the words an entry and an exit are written down as."""


def by_prompt(model_id: str, prompt: str, purpose: str | None) -> tuple[str, str]:
    return f"enter {prompt}", f"exit {prompt}"


class Recorder:
    """Writes ``events`` (entries, exits ``... with <Error>``, ``group exit``) in order.

    Attributes:
        events: What happened, as ``describe`` words it.
        results: The ``PromptResult`` of every prompt entered.
        exits: For each exit: the prompt, the error it exited with, ``chain_complete``.
        settled: For each exit: each attempt of ``result.attempts`` as ``(model_id, error)``,
            and ``result.usage``'s ``(model, outcome)``, as they were then.
    """

    def __init__(self, describe: Describe = by_prompt) -> None:
        self.describe = describe
        self.events: list[str] = []
        self.results: list[PromptResult] = []
        self.exits: list[tuple[str, BaseException | None, bool]] = []
        self.settled: list[tuple[list[tuple[str, str | None]], list[tuple[str, str]]]] = []

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, prompt: str, purpose: str | None, actor: Actor | None
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[object]]:
        entered, exited = self.describe(model_id, prompt, purpose)

        @asynccontextmanager
        async def around(result: PromptResult) -> AsyncIterator[None]:
            self.events.append(entered)
            self.results.append(result)
            try:
                yield
            except BaseException as error:
                self.settle(result)
                self.exits.append((prompt, error, result.chain_complete))
                self.events.append(f"{exited} with {type(error).__name__}")
                raise
            self.settle(result)
            self.exits.append((prompt, None, result.chain_complete))
            self.events.append(exited)

        return around

    def settle(self, result: PromptResult) -> None:
        attempts: list[tuple[str, str | None]] = [(a.model_id, a.error) for a in result.attempts]
        usage: list[tuple[str, str]] = [(record.model, record.outcome) for record in result.usage]
        self.settled.append((attempts, usage))

    @hookimpl
    def llm_group_exit(self, group: Group) -> None:
        self.events.append("group exit")
