"""Scripted replies: what the fake model says (``FakeReply``) and when (``ScriptedReply``)."""

from __future__ import annotations

import inspect
import json as json_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias

from ._records import ModelCall

if TYPE_CHECKING:
    import llm

    from ._matching import Matcher
    from ._provider import ScriptedFailure

__all__ = ["FakeReply", "ReplyCallback", "ScriptedReply", "run_callback", "streamed_chunks"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeReply:
    """What the fake model answers: text, chunks or JSON, with usage and tool calls.

    Give exactly one of ``text``, ``chunks`` and ``json``; with ``tool_calls`` you may give none.

    Attributes:
        text: The reply text, streamed as one chunk.
        chunks: The reply streamed as these chunks.
        json: A JSON-serializable value, sent as its ``json.dumps`` text.
        usage: ``(input_tokens, output_tokens)``; ``None`` counts the words of prompt and reply.
        tool_calls: Tool calls the model makes; in a chain, llm runs the tools and prompts again.
    """

    text: str | None = None
    chunks: Sequence[str] | None = None
    json: object | None = None
    usage: tuple[int, int] | None = None
    tool_calls: Sequence[llm.ToolCall] = field(default=())

    def __post_init__(self) -> None:
        given = [
            name
            for name, value in (("text", self.text), ("chunks", self.chunks), ("json", self.json))
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"A reply takes one of text=, chunks= or json=, got {' and '.join(given)}: "
                "pass chunks=[...] to stream several pieces, or json= for structured output."
            )
        if not given and not self.tool_calls:
            raise ValueError(
                "A reply needs content: pass text='...', chunks=['...', '...'], json={...} or "
                "tool_calls=[llm.ToolCall(...)]."
            )
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(
                f"text= must be a string, got {type(self.text).__name__}: {self.text!r}; "
                "use json= for structured values."
            )
        if self.chunks is not None:
            if isinstance(self.chunks, str) or not all(isinstance(c, str) for c in self.chunks):
                raise TypeError(
                    f"chunks= must be a list of strings, got {self.chunks!r}; "
                    "use text= for a single string."
                )
            object.__setattr__(self, "chunks", tuple(self.chunks))
        if self.json is not None:
            try:
                json_module.dumps(self.json)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"json= must be JSON-serializable ({error}); convert the value first or "
                    "pass text=json.dumps(value, default=str)."
                ) from None
        usage: object = self.usage  # checked at run time for callers without a type checker
        if usage is not None and (
            not isinstance(usage, tuple)
            or len(usage) != 2
            or not all(isinstance(n, int) and n >= 0 for n in usage)
        ):
            raise TypeError(
                f"usage= must be a tuple (input_tokens, output_tokens) of two non-negative "
                f"integers, got {self.usage!r}."
            )
        import llm

        tool_calls: object = self.tool_calls
        if (
            isinstance(tool_calls, str)
            or not isinstance(tool_calls, Sequence)
            or not all(isinstance(call, llm.ToolCall) for call in tool_calls)
        ):
            raise TypeError(
                f"tool_calls= must be a list of llm.ToolCall, got {self.tool_calls!r}; "
                "e.g. tool_calls=[llm.ToolCall(name='lookup', arguments={'id': 1})]."
            )
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))

    def _describe(self) -> list[str]:
        """Return the set fields as ``name=value`` strings."""
        parts: list[str] = []
        if self.text is not None:
            parts.append(f"text={_short(self.text)}")
        if self.chunks is not None:
            parts.append(f"chunks={list(self.chunks)!r}")
        if self.json is not None:
            parts.append(f"json={_short(self.json)}")
        if self.tool_calls:
            names = ", ".join(call.name for call in self.tool_calls)
            parts.append(f"tool_calls=[{names}]")
        if self.usage is not None:
            parts.append(f"usage={self.usage!r}")
        return parts


def streamed_chunks(reply: FakeReply) -> list[str]:
    """Return the chunks the fake model streams for ``reply``."""
    if reply.chunks is not None:
        return list(reply.chunks)
    if reply.json is not None:
        return [json_module.dumps(reply.json)]
    return [reply.text] if reply.text else []


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


ReplyCallback: TypeAlias = "Callable[[ModelCall], str | FakeReply | Awaitable[str | FakeReply]]"
"""Compute the reply from the recorded call; may be async; return text or a ``FakeReply``."""


@dataclass(frozen=True, slots=True, eq=False)
class ScriptedReply:
    """One reply added with ``add_response``, ``add_callback`` or ``add_exception``.

    Attributes:
        number: Its position among the scripted replies, from 1.
        kind: Which ``add_*`` method added it.
        matcher: The calls it answers.
        reply: For ``add_response``, what to answer.
        callback: For ``add_callback``, the function computing the answer.
        exception: For ``add_exception`` with an exception, what to raise.
        failure: For ``add_exception`` with ``kind=``, the provider failure to raise.
        is_reusable: Whether it answers every matching call rather than only the first.
        is_optional: Whether it may go unused.
    """

    number: int
    kind: Literal["response", "callback", "exception"]
    matcher: Matcher
    reply: FakeReply | None = None
    callback: ReplyCallback | None = None
    exception: BaseException | None = None
    failure: ScriptedFailure | None = None
    is_reusable: bool = False
    is_optional: bool = False

    def describe(self) -> str:
        """Return how it was added, e.g. ``add_response(text='Hi', purpose='summarize')``."""
        parts: list[str] = []
        if self.reply is not None:
            parts.extend(self.reply._describe())
        if self.callback is not None:
            name = getattr(self.callback, "__qualname__", None) or type(self.callback).__name__
            parts.append(name)
        if self.exception is not None:
            parts.append(repr(self.exception))
        if self.failure is not None:
            parts.extend(self.failure.describe())
        parts.extend(self.matcher.describe())
        if self.is_reusable:
            parts.append("is_reusable=True")
        if self.is_optional:
            parts.append("is_optional=True")
        return f"add_{self.kind}({', '.join(parts)})"


async def run_callback(scripted: ScriptedReply, call: ModelCall) -> FakeReply:
    """Return the reply ``scripted``'s callback computes for ``call``; check what it returned."""
    assert scripted.callback is not None
    result = scripted.callback(call)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, str):
        return FakeReply(text=result)
    if isinstance(result, FakeReply):
        return result
    raise TypeError(
        f"The callback of scripted reply {scripted.number} ({scripted.describe()}) returned "
        f"{type(result).__name__}: {result!r}; return the reply text or a FakeReply."
    )
