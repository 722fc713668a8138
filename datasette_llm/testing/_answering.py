"""How a fake model's request is answered: recorded as a ``ModelCall``, then replied from the
script, the call's record saying how it ended."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from datasette_llm.provider_errors import classify

from ._defaults import default_text
from ._fake_model import Answer
from ._records import ModelCall, build_call, count_words
from ._replies import FakeReply, run_callback, streamed_chunks
from ._scope import current_scope

if TYPE_CHECKING:
    import llm

    from datasette_llm import Group

    from ._fake_model import FakeAsyncModel
    from ._script import Script

__all__ = ["Responder"]


class Responder:
    """Answer every request of the fake models of one router, recording each.

    Attributes:
        script: The replies to answer from.
        calls: Every request, in order.
        groups: The ``group()`` blocks seen, numbered by their position from 1.
        tool_call_count: How many tool calls were given an id.
    """

    __slots__ = ("calls", "groups", "script", "tool_call_count")

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[ModelCall] = []
        self.groups: list[Group] = []
        self.tool_call_count = 0

    async def answer(self, model: FakeAsyncModel, prompt: llm.Prompt, stream: bool) -> Answer:
        """Record the request, then answer it from the script (an ``AnswerFunction``)."""
        __tracebackhide__ = True  # pytest: show the failure where the code under test prompted
        scope = current_scope()
        actor = scope.actor if scope is not None else None
        call = build_call(
            prompt,
            model_id=model.model_id,
            stream=stream,
            purpose=scope.purpose if scope is not None else None,
            step=scope.step if scope is not None else None,
            actor=dict(actor) if actor is not None else None,
            group=self._group_number(scope.group if scope is not None else None),
            attempt=scope.attempt if scope is not None else None,
        )
        index = len(self.calls)
        self.calls.append(call)
        try:
            reply = await self._reply(call)
        except BaseException as error:
            # The kind routing sees: a ProviderError's own, another exception's as classified.
            failed = dataclasses.replace(call, error=classify(error, call.model_id).kind)
            self.calls[index] = failed
            raise
        chunks = tuple(streamed_chunks(reply))
        usage = reply.usage or (count_words(call), len("".join(chunks).split()))
        return Answer(chunks, usage, tuple(self._with_id(c) for c in reply.tool_calls))

    async def _reply(self, call: ModelCall) -> FakeReply:
        __tracebackhide__ = True
        scripted = self.script.choose(call)
        if scripted is None:
            return FakeReply(text=default_text(call))
        if scripted.failure is not None:
            described = f"reply {scripted.number}: {scripted.describe()}"
            raise scripted.failure.error(call.model_id, described)
        if scripted.exception is not None:
            raise scripted.exception
        if scripted.callback is not None:
            return await run_callback(scripted, call)
        assert scripted.reply is not None
        return scripted.reply

    def _group_number(self, group: Group | None) -> int | None:
        if group is None:
            return None
        for index, seen in enumerate(self.groups, start=1):
            if seen is group:
                return index
        self.groups.append(group)
        return len(self.groups)

    def _with_id(self, tool_call: llm.ToolCall) -> llm.ToolCall:
        if tool_call.tool_call_id is not None:
            return tool_call
        self.tool_call_count += 1
        return dataclasses.replace(tool_call, tool_call_id=f"call-{self.tool_call_count}")
