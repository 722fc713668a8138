"""The router's script: scripted replies and failures, which call each answers, and the errors.

A ``FakeReply`` says what the fake model answers and a ``ScriptedReply`` when (purpose, model id
and prompt, each optional); ``add_exception(kind=...)`` scripts a provider failure, checked when
added and raised per call. The ``Script`` keeps the replies in the order added and how often each
was used. Every failure the router reports says what happened, what was scripted and the fix;
the errors it raises inside the code under test are defined here.
"""

from __future__ import annotations

import difflib
import inspect
import json as json_module
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias

from datasette_llm import ErrorKind, ProviderError, Purpose
from datasette_llm.provider_errors import ERROR_KINDS

from ._records import ModelCall

if TYPE_CHECKING:
    import llm

    from ._records import ModelCall

__all__ = [
    "FakeReply",
    "Matcher",
    "PromptMatch",
    "RealModelRequestError",
    "ReplyCallback",
    "RouterStoppedError",
    "Script",
    "ScriptedFailure",
    "ScriptedReply",
    "UnmatchedPromptError",
    "blocked_message",
    "build_failure",
    "build_matcher",
    "describe_call",
    "embedding_blocked_message",
    "get_call_message",
    "repr_router",
    "run_callback",
    "stop_message",
    "stopped_message",
    "streamed_chunks",
    "unmatched_message",
]


# The errors raised inside the code under test.


class UnmatchedPromptError(AssertionError):
    """A prompt reached the fake model router and no scripted reply matches it."""

    __module__ = "datasette_llm.testing"


class RealModelRequestError(AssertionError):
    """A prompt or embedding tried to reach a real model while a ``FakeModelRouter`` was active."""

    __module__ = "datasette_llm.testing"


class RouterStoppedError(AssertionError):
    """A fake model was prompted after the ``FakeModelRouter`` that made it had stopped."""

    __module__ = "datasette_llm.testing"


# Which calls a scripted reply answers.

PromptMatch: TypeAlias = "str | re.Pattern[str] | Callable[[str], bool]"
"""Match the prompt text exactly (``str``), by ``re.search`` (pattern), or by a predicate."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """The conditions a call must meet; ``None`` matches anything.

    Attributes:
        purpose: The purpose name the call must have.
        model_id: The model id routing must have chosen.
        prompt: What the prompt text must match.
    """

    purpose: str | None = None
    model_id: str | None = None
    prompt: PromptMatch | None = None

    def mismatches(self, call: ModelCall) -> list[str]:
        """Return why ``call`` does not match, one reason per condition; empty if it matches."""
        reasons: list[str] = []
        if self.purpose is not None and call.purpose != self.purpose:
            reasons.append(f"purpose is {call.purpose!r}, not {self.purpose!r}")
        if self.model_id is not None and call.model_id != self.model_id:
            reasons.append(f"model_id is {call.model_id!r}, not {self.model_id!r}")
        if self.prompt is not None and not _prompt_matches(self.prompt, call.prompt):
            reasons.append(f"prompt does not match {_describe_prompt(self.prompt)}")
        return reasons

    def describe(self) -> list[str]:
        """Return the set conditions as ``name=value`` strings."""
        parts: list[str] = []
        if self.purpose is not None:
            parts.append(f"purpose={self.purpose!r}")
        if self.model_id is not None:
            parts.append(f"model_id={self.model_id!r}")
        if self.prompt is not None:
            parts.append(f"prompt={_describe_prompt(self.prompt)}")
        return parts


def _prompt_matches(expected: PromptMatch, prompt: str) -> bool:
    if isinstance(expected, str):
        return prompt == expected
    if isinstance(expected, re.Pattern):
        return expected.search(prompt) is not None
    return bool(expected(prompt))


def _describe_prompt(expected: PromptMatch) -> str:
    if isinstance(expected, str | re.Pattern):
        return repr(expected)
    name = getattr(expected, "__qualname__", None) or type(expected).__qualname__
    return f"<callable {name}>"


def build_matcher(
    purpose: str | Purpose | None, model_id: str | None, prompt: PromptMatch | None
) -> Matcher:
    """Check the matcher arguments and build a ``Matcher``, saying how to fix a wrong one."""
    if isinstance(purpose, Purpose):
        purpose = purpose.name
    elif purpose is not None and not isinstance(purpose, str):
        raise TypeError(
            f"purpose= must be a purpose name or a datasette_llm.Purpose, "
            f"got {type(purpose).__name__}: {purpose!r}"
        )
    if model_id is not None and not isinstance(model_id, str):
        raise TypeError(
            f"model_id= must be a model id string such as 'gpt-5.4-nano', "
            f"got {type(model_id).__name__}: {model_id!r}"
        )
    if prompt is not None and not isinstance(prompt, str | re.Pattern) and not callable(prompt):
        raise TypeError(
            f"prompt= must be a string (exact match), a compiled re.Pattern (searched) or a "
            f"callable taking the prompt text, got {type(prompt).__name__}: {prompt!r}"
        )
    return Matcher(purpose=purpose, model_id=model_id, prompt=prompt)


# Scripted provider failures.


@dataclass(frozen=True, slots=True)
class ScriptedFailure:
    """A provider failure to raise, as datasette-llm raises one for a failing provider.

    Attributes:
        kind: The kind of failure.
        status: The HTTP status the provider is said to have answered, if any.
        retry_after: The seconds the provider is said to have asked to wait, if any.
    """

    kind: ErrorKind
    status: int | None = None
    retry_after: float | None = None

    def describe(self) -> list[str]:
        """Return the set fields as ``name=value`` strings."""
        parts = [f"kind={self.kind!r}"]
        if self.status is not None:
            parts.append(f"status={self.status!r}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after!r}")
        return parts

    def error(self, model_id: str, scripted: str) -> ProviderError:
        """Return a new ``ProviderError`` of this kind for ``model_id``, naming the reply."""
        return ProviderError(
            self.kind,
            model_id,
            f"a failure scripted with FakeModelRouter ({scripted})",
            status=self.status,
            retry_after=self.retry_after,
        )


def build_failure(
    exception: BaseException | None,
    kind: object,
    status: object,
    retry_after: object,
) -> ScriptedFailure | None:
    """Check ``add_exception``'s arguments; return the failure for ``kind=``, else ``None``.

    Raises:
        TypeError: Neither or both of ``exception`` and ``kind`` are given, or a value has the
            wrong type.
        ValueError: ``kind`` is not an error kind.
    """
    __tracebackhide__ = True  # pytest: show the failure at the add_exception() call
    kinds = ", ".join(ERROR_KINDS)
    if exception is not None and kind is not None:
        raise TypeError(
            f"add_exception() takes an exception or kind=, not both (got {exception!r} and "
            f"kind={kind!r}): pass kind= alone for a provider failure of that kind, or the "
            "exception alone to raise it as it is."
        )
    if kind is None:
        if exception is None:
            raise TypeError(
                "add_exception() needs what to raise: a provider failure of a kind, e.g. "
                "add_exception(kind='rate_limit', model_id='gpt-5.4'), or an exception "
                f"instance, e.g. add_exception(TimeoutError('slow')). Error kinds: {kinds}."
            )
        if not isinstance(exception, BaseException):
            raise TypeError(
                f"add_exception() takes an exception instance such as "
                f"RuntimeError('rate limited'), got {type(exception).__name__}: {exception!r}"
            )
        if status is not None or retry_after is not None:
            raise TypeError(
                "status= and retry_after= go with kind=, e.g. add_exception(kind='rate_limit', "
                "retry_after=2.0); an exception instance is raised as it is."
            )
        return None
    return ScriptedFailure(_kind(kind, kinds), _status(status), _retry_after(retry_after))


def _kind(kind: object, kinds: str) -> ErrorKind:
    __tracebackhide__ = True
    if not isinstance(kind, str):
        raise TypeError(
            f"kind= must be an error kind name such as 'rate_limit', "
            f"got {type(kind).__name__}: {kind!r}. Error kinds: {kinds}."
        )
    for known in ERROR_KINDS:
        if known == kind:
            return known
    close = difflib.get_close_matches(kind, ERROR_KINDS, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else "."
    raise ValueError(f"Unknown error kind {kind!r}{hint} Error kinds: {kinds}.")


def _status(status: object) -> int | None:
    __tracebackhide__ = True
    if status is None:
        return None
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise TypeError(f"status= must be an HTTP status code such as 429, got {status!r}.")
    return status


def _retry_after(retry_after: object) -> float | None:
    __tracebackhide__ = True
    if retry_after is None:
        return None
    if (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, int | float)
        or not retry_after >= 0
    ):
        raise TypeError(
            f"retry_after= must be the seconds to wait, a number >= 0, got {retry_after!r}."
        )
    return float(retry_after)


# Scripted replies.


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


# The text of every failure the router reports.


def describe_call(call: ModelCall) -> str:
    """Describe a call in one line: purpose, model, (shortened) prompt and error, if any."""
    prompt = call.prompt if len(call.prompt) <= 60 else call.prompt[:57] + "..."
    error = f", error={call.error!r}" if call.error is not None else ""
    return f"purpose={call.purpose!r}, model_id={call.model_id!r}, prompt={prompt!r}{error}"


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def unmatched_message(
    call: ModelCall, replies: Sequence[ScriptedReply], uses: dict[int, int]
) -> str:
    """Explain why no scripted reply answers ``call``, reply by reply, and how to fix it."""
    lines = [
        f"No scripted reply matches this call: {describe_call(call)}",
        "Scripted replies:",
    ]
    used_match = False
    for scripted in replies:
        reasons = scripted.matcher.mismatches(call)
        if not reasons and uses[scripted.number]:
            used_match = True
            reasons = ["matches, but was already used"]
        lines.append(f"  {scripted.number}. {scripted.describe()} - {'; '.join(reasons)}")
    if used_match:
        lines.append(
            "Add another reply for this call, or pass is_reusable=True to let a reply answer "
            "every matching call."
        )
    else:
        example = Matcher(purpose=call.purpose, model_id=call.model_id).describe()
        arguments = "".join(f", {part}" for part in example)
        lines.append(f"Add a reply for this call, e.g. router.add_response(text='...'{arguments}).")
    return "\n".join(lines)


def blocked_message(description: str) -> str:
    """Explain that a request to a real model was refused, and how to route it instead."""
    return (
        f"FakeModelRouter blocked a request to the real model {description}: no prompt may "
        "reach a real model while the router is active. The code under test prompted an llm "
        "model it got without datasette-llm (llm.get_async_model(), LLM.models()); get it "
        "with LLM(datasette).model(...) or .group(...) so the router answers it."
    )


def embedding_blocked_message(description: str, model_id: object) -> str:
    """Explain that a real embedding model was refused, and how to allow a test one."""
    allowed = f"allow_embedding_models=[{model_id!r}]"
    return (
        f"FakeModelRouter blocked a request to the real embedding model {description}: no "
        "request may reach a real model while the router is active, and the router does not "
        "fake embeddings. Embed outside the router's scope or, for an embedding model of your "
        f"test suite, allow it with @pytest.mark.fake_model_router({allowed}) (the fixture) "
        f"or FakeModelRouter({allowed})."
    )


def stopped_message(model_id: str) -> str:
    """Explain that a fake model was prompted after its router stopped, and what to do."""
    return (
        f"The fake model {model_id!r} was prompted after the FakeModelRouter that made it "
        "stopped: a model obtained while the router was active (LLM(datasette).model(...) or "
        ".group(...)) answers only until the router stops. Nothing was sent to a real model "
        "and nothing was recorded. Prompt it inside the router's scope (the test that uses the "
        "fake_model_router fixture, or the `with FakeModelRouter():` block), or obtain the "
        "model again after the router has stopped to get the real one."
    )


def stop_message(
    unmatched: Sequence[str],
    blocked: Sequence[str],
    unused: Sequence[ScriptedReply],
    opt_out: str,
) -> str | None:
    """Return what went wrong in a test when the router stops, or ``None`` if nothing did."""
    sections: list[str] = []
    if unmatched:
        listing = "".join(f"\n  - {line}" for line in unmatched)
        sections.append(
            f"{_plural(len(unmatched), 'prompt', 'prompts')} matched no scripted reply "
            f"(the UnmatchedPromptError was raised inside the code under test):{listing}"
        )
    if blocked:
        listing = "".join(f"\n  - {line}" for line in blocked)
        count = _plural(len(blocked), "request", "requests")
        sections.append(
            f"{count} to a real model {'was' if len(blocked) == 1 else 'were'} blocked:{listing}"
        )
    if unused:
        verb = "was" if len(unused) == 1 else "were"
        count = _plural(len(unused), "scripted reply", "scripted replies")
        listing = "".join(f"\n  {reply.number}. {reply.describe()}" for reply in unused)
        sections.append(
            f"{count} {verb} never used:{listing}\n"
            f"Remove {'it' if len(unused) == 1 else 'them'}, pass is_optional=True when "
            f"adding {'it' if len(unused) == 1 else 'them'}, or {opt_out}."
        )
    if not sections:
        return None
    return "FakeModelRouter: " + "\n".join(sections)


def get_call_message(matcher: Matcher, found: int, calls: Sequence[ModelCall]) -> str:
    """Explain that ``get_call()`` did not find exactly one call, listing every call."""
    conditions = ", ".join(matcher.describe()) or "no conditions"
    listing = "".join(f"\n  - {describe_call(call)}" for call in calls) or " none"
    return (
        f"Expected exactly one call matching {conditions}, found {found}. Calls recorded:{listing}"
    )


def repr_router(calls: int, replies: int, unused: int) -> str:
    """Return the router's repr, counting calls and replies."""
    counted = _plural(calls, "call", "calls")
    if not replies:
        return f"<FakeModelRouter: {counted}, no scripted replies>"
    scripted = _plural(replies, "scripted reply", "scripted replies")
    return f"<FakeModelRouter: {counted}, {scripted} ({unused} unused)>"


# The script.


class Script:
    """The scripted replies of one router and what became of them.

    Attributes:
        replies: The replies, in the order they were added.
        uses: How many calls each reply (by number) answered.
        unmatched: A line describing each call that no reply matched.
    """

    __slots__ = ("replies", "unmatched", "uses")

    def __init__(self) -> None:
        self.replies: list[ScriptedReply] = []
        self.uses: dict[int, int] = {}
        self.unmatched: list[str] = []

    def add(self, scripted: Callable[[int], ScriptedReply]) -> None:
        """Add a reply after the others: ``scripted(number)`` makes it, given its number."""
        number = len(self.replies) + 1
        self.replies.append(scripted(number))
        self.uses[number] = 0

    def choose(self, call: ModelCall) -> ScriptedReply | None:
        """Return the first unused reply matching ``call`` and count its use.

        Returns ``None`` when nothing is scripted (the default reply answers).

        Raises:
            UnmatchedPromptError: Replies are scripted and none matches ``call``.
        """
        __tracebackhide__ = True
        if not self.replies:
            return None
        for scripted in self.replies:
            if self.uses[scripted.number] and not scripted.is_reusable:
                continue
            if not scripted.matcher.mismatches(call):
                self.uses[scripted.number] += 1
                return scripted
        self.unmatched.append(describe_call(call))
        raise UnmatchedPromptError(unmatched_message(call, self.replies, self.uses))

    def unused(self, *, optional: bool) -> list[ScriptedReply]:
        """Return the replies never used, counting ``is_optional`` ones only if ``optional``."""
        return [
            scripted
            for scripted in self.replies
            if not self.uses[scripted.number] and (optional or not scripted.is_optional)
        ]
