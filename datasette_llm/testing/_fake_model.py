"""``FakeAsyncModel``: a real ``llm.AsyncModel`` whose answers come from the router's script.

The router registers ``ScopePlugin`` with Datasette's plugin manager; its
``llm_prompt_context`` hook sets a context variable around each prompt (purpose, actor, group,
resolution step) that the fake model reads when llm asks it to answer. Each request is recorded
as a ``ModelCall``, then replied from the script, the record saying how it ended. While a router
is active, every request to a real llm model (prompts and embeddings) is blocked.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import llm
from llm import models as llm_models
from pydantic import ConfigDict

from datasette_llm import Group, PromptResult
from datasette_llm.provider_errors import classify
from datasette_llm.typing import hookimpl

from ._records import ModelCall, build_call, count_words, default_text
from ._script import FakeReply, RouterStoppedError, run_callback, stopped_message, streamed_chunks

if TYPE_CHECKING:
    import llm
    from llm.models import AsyncConversation, AsyncResponse

    from datasette_llm import Actor, Group, ResolutionStep

    from ._script import Script

__all__ = [
    "Activation",
    "Answer",
    "AnswerFunction",
    "FakeAsyncModel",
    "PLUGIN_NAME",
    "PromptScope",
    "RefuseEmbedding",
    "Responder",
    "ScopePlugin",
    "block_real_requests",
    "current_scope",
    "embedding_model_ids",
]


# What the fake model knows of the prompt it answers.

PLUGIN_NAME: Final = "datasette-llm-fake-model-router"


@dataclass(frozen=True, slots=True)
class PromptScope:
    """The datasette-llm side of the prompt being answered.

    Attributes:
        purpose: The purpose name, or ``None``.
        actor: The actor, or ``None``.
        group: The ``Group`` of a ``group()`` block, or ``None``.
        step: The resolution step that chose the model (``"fallback"`` for a fallback).
        attempt: The number of the prompt's attempt under way (``Attempt.number``).
    """

    purpose: str | None
    actor: Actor | None
    group: Group | None
    step: ResolutionStep | None
    attempt: int


_current: ContextVar[PromptScope | None] = ContextVar("datasette_llm_fake_scope", default=None)


def current_scope() -> PromptScope | None:
    """Return the scope of the prompt being answered, or ``None`` outside datasette-llm."""
    return _current.get()


@asynccontextmanager
async def _scope(
    model_id: str, purpose: str | None, actor: Actor | None, result: PromptResult
) -> AsyncIterator[None]:
    resolution = result.resolution
    step: ResolutionStep | None = None
    if resolution is not None:
        # The resolution is the routed model's; an attempt on another model is a fallback's.
        step = "fallback" if model_id != resolution.model_id else resolution.step
    # Entered as the attempt starts, when the attempts before it have ended.
    attempt = len(result.attempts) + 1
    token = _current.set(PromptScope(purpose, actor, result.group, step, attempt))
    try:
        yield None
    finally:
        try:
            _current.reset(token)
        except ValueError:  # a chain closed from another context
            _current.set(None)


class ScopePlugin:
    """A Datasette plugin that tells the fake model which prompt it is answering."""

    @hookimpl
    def llm_prompt_context(
        self, model_id: str, purpose: str | None, actor: Actor | None
    ) -> Callable[[PromptResult], AbstractAsyncContextManager[None]]:
        """Return a factory of the context that sets the prompt's scope."""

        def factory(result: PromptResult) -> AbstractAsyncContextManager[None]:
            return _scope(model_id, purpose, actor, result)

        return factory


# The fake model.


@dataclass(frozen=True, slots=True)
class Answer:
    """What the fake model streams for one request.

    Attributes:
        chunks: The text chunks, in order.
        usage: ``(input_tokens, output_tokens)``.
        tool_calls: Tool calls the model makes.
    """

    chunks: tuple[str, ...]
    usage: tuple[int, int]
    tool_calls: tuple[llm.ToolCall, ...]


AnswerFunction = Callable[["FakeAsyncModel", llm.Prompt, bool], Awaitable[Answer]]


class Activation:
    """One activation of a ``FakeModelRouter``: the fake models it made answer until it ends.

    Attributes:
        active: ``True`` until the router stops.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True

    def end(self) -> None:
        """Stop every fake model of this activation from answering."""
        self.active = False


class _AnyAttachmentType(frozenset[str]):
    """Attachment types of a model that is not installed: every type is accepted."""

    def __contains__(self, item: object) -> bool:
        return True


class FakeAsyncModel(llm.AsyncModel):
    """Stand in for the model routing chose, answering from a ``FakeModelRouter``.

    It needs no key (``needs_key`` is ``None``) and supports schemas, tools and streaming. When
    the real model is installed its ``Options`` and attachment types are kept, so invalid
    options fail as they would in production; otherwise any option and attachment is accepted.

    Once the router stops, prompting it raises ``RouterStoppedError`` and records nothing.

    Attributes:
        model_id: The real model's id (an alias is resolved to it when the model is installed).
        installed: The real model, or ``None`` when it is not installed.
        activation: The activation of the router that made it.
    """

    can_stream = True
    supports_schema = True
    supports_tools = True
    needs_key = None

    class Options(llm.AsyncModel.Options):
        """Options for a model that is not installed: any option is accepted and recorded."""

        model_config = ConfigDict(extra="allow")

    def __init__(
        self,
        model_id: str,
        installed: llm.AsyncModel | None,
        answer: AnswerFunction,
        activation: Activation,
    ) -> None:
        self.model_id = model_id
        self.installed = installed
        self.activation = activation
        self._answer = answer
        if installed is not None:
            # llm builds options with self.Options(...): keep the real model's validation.
            setattr(self, "Options", installed.Options)  # noqa: B010
            self.attachment_types = installed.attachment_types
        else:
            self.attachment_types = _AnyAttachmentType({"*/*"})

    async def execute(
        self,
        prompt: llm.Prompt,
        stream: bool,
        response: AsyncResponse,
        conversation: AsyncConversation | None,
    ) -> AsyncGenerator[str, None]:
        """Ask the router for the answer, then stream it as llm expects."""
        __tracebackhide__ = True
        if not self.activation.active:
            raise RouterStoppedError(stopped_message(self.model_id))
        answer = await self._answer(self, prompt, stream)
        for tool_call in answer.tool_calls:
            response.add_tool_call(tool_call)
        response.set_usage(input=answer.usage[0], output=answer.usage[1])
        for chunk in answer.chunks:
            yield chunk


# Answering a request.


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


# Blocking real models.

# The two places llm 0.36 calls a model's execute(): async and sync responses.
_ASYNC_START: tuple[type[Any], str] = (llm_models.AsyncResponse, "_ensure_async_generator")
_SYNC_START: tuple[type[Any], str] = (llm_models.Response, "_iter_events")

# llm 0.36's public ways to embed (it has no async embedding models): ``embed`` and
# ``embed_multi`` (which ``Collection`` calls), and each model's own ``embed_batch``.
_EMBEDDING_METHODS: Final = ("embed", "embed_multi", "embed_batch")

RefuseEmbedding = Callable[[object, str], BaseException | None]
"""Return the error for ``model.<method>()``, or ``None`` to let the embedding through."""


def embedding_model_ids(ids: Iterable[str]) -> frozenset[str]:
    """Check the ids given as ``allow_embedding_models`` and return them as a set."""
    listed = () if isinstance(ids, str) else tuple(ids)
    if isinstance(ids, str) or not all(isinstance(model_id, str) for model_id in listed):
        raise TypeError(
            f"allow_embedding_models takes a list of embedding model ids, e.g. "
            f"allow_embedding_models=['my-test-embedder'], got {ids!r}"
        )
    return frozenset(listed)


def block_real_requests(
    refuse: Callable[[object], BaseException], refuse_embedding: RefuseEmbedding
) -> Callable[[], None]:
    """Make any response whose model is not a ``FakeAsyncModel`` raise ``refuse(model)``.

    Every embedding method raises ``refuse_embedding(model, method)`` unless that returns
    ``None``. Returns the function that restores llm's behaviour.
    """
    async_class, async_name = _ASYNC_START
    sync_class, sync_name = _SYNC_START
    original_async: Callable[[Any], None] = getattr(async_class, async_name)
    original_sync: Callable[[Any], Iterator[Any]] = getattr(sync_class, sync_name)

    def guarded_async(response: Any) -> None:
        __tracebackhide__ = True
        if not hasattr(response, "_generator") and not isinstance(response.model, FakeAsyncModel):
            raise refuse(response.model)
        original_async(response)

    def guarded_sync(response: Any) -> Iterator[Any]:
        __tracebackhide__ = True
        raise refuse(response.model)

    setattr(async_class, async_name, guarded_async)
    setattr(sync_class, sync_name, guarded_sync)
    restore_embeddings = _block_embeddings(refuse_embedding)

    def restore() -> None:
        restore_embeddings()
        setattr(async_class, async_name, original_async)
        setattr(sync_class, sync_name, original_sync)

    return restore


def _embedding_classes() -> list[type[Any]]:
    """Return ``llm.EmbeddingModel`` and every subclass defined so far."""
    found: list[type[Any]] = []
    pending: list[type[Any]] = [llm_models.EmbeddingModel]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def _guarded(method: Callable[..., Any], name: str, refuse: RefuseEmbedding) -> Callable[..., Any]:
    # functools.wraps keeps the signature: llm inspects embed_batch's to decide on key=.
    @functools.wraps(method)
    def guarded(model: object, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        error = refuse(model, name)
        if error is not None:
            raise error
        return method(model, *args, **kwargs)

    return guarded


def _block_embeddings(refuse: RefuseEmbedding) -> Callable[[], None]:
    """Guard each embedding method of every embedding model class, now and until the undo.

    Classes defined while the guard is up (a test's own, say) are guarded as they are created.
    """
    base = llm_models.EmbeddingModel
    replaced: list[tuple[type[Any], str, Callable[..., Any]]] = []

    def guard(cls: type[Any]) -> None:
        for name in _EMBEDDING_METHODS:
            method = vars(cls).get(name)
            if inspect.isfunction(method) and not getattr(method, "__isabstractmethod__", False):
                replaced.append((cls, name, method))
                setattr(cls, name, _guarded(method, name, refuse))

    for cls in _embedding_classes():
        guard(cls)

    def init_subclass(cls: type[Any], /, **kwargs: Any) -> None:
        super(base, cls).__init_subclass__(**kwargs)
        guard(cls)

    # A class's __init_subclass__ is Python's public hook on the creation of its subclasses.
    original_init_subclass = vars(base).get("__init_subclass__")
    setattr(base, "__init_subclass__", classmethod(init_subclass))  # noqa: B010

    def restore() -> None:
        if original_init_subclass is None:
            delattr(base, "__init_subclass__")
        else:
            setattr(base, "__init_subclass__", original_init_subclass)  # noqa: B010
        for cls, name, method in reversed(replaced):
            setattr(cls, name, method)

    return restore
