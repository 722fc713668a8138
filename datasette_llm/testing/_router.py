"""``FakeModelRouter``: routing runs for real, the chosen model answers from a script."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Literal

import stamina

from datasette_llm import stand_in_for_models

from ._fake_model import Activation, FakeAsyncModel, Responder, embedding_model_ids
from ._records import ModelCall
from ._script import (
    FakeReply,
    PromptMatch,
    RealModelRequestError,
    ReplyCallback,
    Script,
    ScriptedFailure,
    ScriptedReply,
    blocked_message,
    build_failure,
    build_matcher,
    embedding_blocked_message,
    get_call_message,
    repr_router,
    stop_message,
)

if TYPE_CHECKING:
    import llm

    from datasette_llm import ErrorKind, Purpose

__all__ = ["FakeModelRouter"]

_CONTEXT_OPT_OUT = "pass assert_all_replies_used=False to FakeModelRouter()"


class FakeModelRouter:
    """Answer every routed model call from scripted replies, and record each call.

    Use the ``fake_model_router`` pytest fixture, or ``with FakeModelRouter() as router:``.
    While active, datasette-llm routes as usual (configuration, hooks, allow and block lists)
    and whichever model it chooses — installed or not — answers from this router;
    ``llm_prompt_context`` and ``llm_group_exit`` hooks still run. A request that would reach a
    real model raises ``RealModelRequestError``, and so does a real embedding (llm's
    ``EmbeddingModel``) unless allowed. Models obtained while it is active stop answering when
    it stops: prompting one then raises ``RouterStoppedError``.

    With nothing scripted every call gets a deterministic default reply (valid JSON for a
    ``schema=`` prompt). Once anything is scripted, a call no reply matches raises
    ``UnmatchedPromptError``, and replies never used fail the test when the router stops.

    Fallbacks run as configured: each attempt of a prompt is a call (``calls``), and says how
    it ended (``ModelCall.error``). Backoff never waits, and each model is tried once per
    prompt unless ``retries=True``: while active, the router turns on stamina's test mode
    (``stamina.set_testing``), and puts it back as it was when it stops.

    Args:
        assert_all_replies_used: Fail on exit if a scripted reply (not ``is_optional``) was
            never used.
        assert_all_prompts_matched: Fail on exit if a prompt matched no scripted reply, even
            though the code under test caught the ``UnmatchedPromptError``.
        allow_embedding_models: Ids of embedding models that may embed while the router is
            active (your test suite's own); every other embedding is refused.
        retries: Retry a failing model as configured (``retries:``), without waiting, rather
            than trying each model once per prompt.
    """

    _active: ClassVar[FakeModelRouter | None] = None

    def __init__(
        self,
        *,
        assert_all_replies_used: bool = True,
        assert_all_prompts_matched: bool = True,
        allow_embedding_models: Iterable[str] = (),
        retries: bool = False,
    ) -> None:
        self.assert_all_replies_used = assert_all_replies_used
        self.assert_all_prompts_matched = assert_all_prompts_matched
        self.allow_embedding_models = embedding_model_ids(allow_embedding_models)
        self.retries = retries
        self._script = Script()
        self._responder = Responder(self._script)
        self._calls = self._responder.calls
        self._blocked: list[str] = []
        self._fakes: dict[str, FakeAsyncModel] = {}
        self._activation: Activation | None = None
        self._restore_guard: Callable[[], None] | None = None
        self._switches: ExitStack | None = None

    # -- scripting -------------------------------------------------------------------------

    def add_response(
        self,
        *,
        text: str | None = None,
        chunks: Sequence[str] | None = None,
        json: object | None = None,
        purpose: str | Purpose | None = None,
        model_id: str | None = None,
        prompt: PromptMatch | None = None,
        usage: tuple[int, int] | None = None,
        tool_calls: Sequence[llm.ToolCall] = (),
        is_reusable: bool = False,
        is_optional: bool = False,
    ) -> None:
        """Answer the first matching call with ``text``, ``chunks`` or ``json``.

        Args:
            text: The reply text.
            chunks: The reply, streamed as these chunks.
            json: A JSON-serializable value to answer with (for ``schema=`` prompts).
            purpose: Only answer calls for this purpose.
            model_id: Only answer calls routed to this model.
            prompt: Only answer prompts equal to this string, searched by this pattern, or
                for which this callable returns true.
            usage: ``(input_tokens, output_tokens)``; by default the words are counted.
            tool_calls: Tool calls to make; in a chain llm runs the tools and prompts again.
            is_reusable: Answer every matching call, not only the first.
            is_optional: Do not fail the test if it is never used.
        """
        reply = FakeReply(text=text, chunks=chunks, json=json, usage=usage, tool_calls=tool_calls)
        self._add("response", purpose, model_id, prompt, is_reusable, is_optional, reply=reply)

    def add_callback(
        self,
        callback: ReplyCallback,
        *,
        purpose: str | Purpose | None = None,
        model_id: str | None = None,
        prompt: PromptMatch | None = None,
        is_reusable: bool = False,
        is_optional: bool = False,
    ) -> None:
        """Answer the first matching call with what ``callback(call)`` returns.

        ``callback`` receives the ``ModelCall`` and returns the reply text or a ``FakeReply``;
        it may be a coroutine function. Matchers and flags are as for ``add_response``.
        """
        if not callable(callback):
            raise TypeError(
                f"add_callback() takes a function of the ModelCall returning text or a "
                f"FakeReply, got {type(callback).__name__}: {callback!r}"
            )
        self._add(
            "callback", purpose, model_id, prompt, is_reusable, is_optional, callback=callback
        )

    def add_exception(
        self,
        exception: BaseException | None = None,
        *,
        kind: ErrorKind | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        purpose: str | Purpose | None = None,
        model_id: str | None = None,
        prompt: PromptMatch | None = None,
        is_reusable: bool = False,
        is_optional: bool = False,
    ) -> None:
        """Fail the first matching call, as a failing provider would.

        Give ``exception`` or ``kind``. With ``kind``, the call raises a new
        ``datasette_llm.ProviderError`` of that kind for the model it was routed to, saying it
        was scripted; routing retries and falls back on it as configured. An exception instance
        is raised as it is, and datasette-llm classifies it as it would a provider's.

        Args:
            exception: The exception to raise.
            kind: The kind of provider failure to raise (``"rate_limit"``, ``"timeout"``...).
            status: With ``kind``, the HTTP status the provider answered.
            retry_after: With ``kind``, the seconds the provider asked to wait.

        Matchers and flags are as for ``add_response``.
        """
        __tracebackhide__ = True
        failure = build_failure(exception, kind, status, retry_after)
        self._add(
            "exception",
            purpose,
            model_id,
            prompt,
            is_reusable,
            is_optional,
            exception=exception,
            failure=failure,
        )

    def _add(
        self,
        kind: Literal["response", "callback", "exception"],
        purpose: str | Purpose | None,
        model_id: str | None,
        prompt: PromptMatch | None,
        is_reusable: bool,
        is_optional: bool,
        *,
        reply: FakeReply | None = None,
        callback: ReplyCallback | None = None,
        exception: BaseException | None = None,
        failure: ScriptedFailure | None = None,
    ) -> None:
        matcher = build_matcher(purpose, model_id, prompt)
        self._script.add(
            functools.partial(
                ScriptedReply,
                kind=kind,
                matcher=matcher,
                reply=reply,
                callback=callback,
                exception=exception,
                failure=failure,
                is_reusable=is_reusable,
                is_optional=is_optional,
            )
        )

    # -- recorded calls ----------------------------------------------------------------------

    @property
    def calls(self) -> tuple[ModelCall, ...]:
        """Every call the fake models answered (or failed), in order: one per attempt."""
        return tuple(self._calls)

    def get_calls(
        self,
        *,
        purpose: str | Purpose | None = None,
        model_id: str | None = None,
        prompt: PromptMatch | None = None,
    ) -> list[ModelCall]:
        """Return the calls matching every condition given (all calls if none is given)."""
        matcher = build_matcher(purpose, model_id, prompt)
        return [call for call in self._calls if not matcher.mismatches(call)]

    def get_call(
        self,
        *,
        purpose: str | Purpose | None = None,
        model_id: str | None = None,
        prompt: PromptMatch | None = None,
    ) -> ModelCall:
        """Return the one call matching the conditions; fail if there are none or several."""
        matcher = build_matcher(purpose, model_id, prompt)
        found = [call for call in self._calls if not matcher.mismatches(call)]
        if len(found) == 1:
            return found[0]
        raise AssertionError(get_call_message(matcher, len(found), self._calls))

    def __repr__(self) -> str:
        unused = len(self._script.unused(optional=True))
        return repr_router(len(self._calls), len(self._script.replies), unused)

    # -- activation --------------------------------------------------------------------------

    def __enter__(self) -> FakeModelRouter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            problems = self.unmet_expectations()
            if problems:
                raise AssertionError(problems)

    def start(self) -> None:
        """Start answering routed models (the fixture and ``with`` do this for you)."""
        if FakeModelRouter._active is not None:
            raise RuntimeError(
                "A FakeModelRouter is already active: use the one you have (the "
                "fake_model_router fixture) instead of starting another."
            )
        from datasette.plugins import pm

        from ._fake_model import PLUGIN_NAME, ScopePlugin, block_real_requests

        FakeModelRouter._active = self
        switches = self._switches = ExitStack()
        # stamina's test mode: no backoff waits; each model is tried once, or (capped at a
        # number never reached) as often as configured.
        tries = sys.maxsize if self.retries else 1
        switches.enter_context(stamina.set_testing(True, attempts=tries, cap=self.retries))
        self._activation = Activation()
        self._fakes = {}
        switches.enter_context(stand_in_for_models(self._stand_in))
        pm.register(ScopePlugin(), name=PLUGIN_NAME)
        self._restore_guard = block_real_requests(self._refuse, self._refuse_embedding)

    def stop(self) -> None:
        """Stop answering; models obtained while active stop answering too."""
        if FakeModelRouter._active is not self:
            return
        from datasette.plugins import pm

        from ._fake_model import PLUGIN_NAME

        if self._restore_guard is not None:
            self._restore_guard()
            self._restore_guard = None
        if pm.has_plugin(PLUGIN_NAME):
            pm.unregister(name=PLUGIN_NAME)
        if self._switches is not None:
            self._switches.close()  # the stand-in, then stamina's test mode as it was
            self._switches = None
        if self._activation is not None:
            self._activation.end()
        FakeModelRouter._active = None

    def unmet_expectations(self, opt_out: str | None = None) -> str | None:
        """Return what went wrong that the code under test may have hidden, or ``None``.

        Prompts that matched no reply, requests to real models, replies never used (unless
        opted out); ``opt_out`` is the sentence saying how to opt out of the last (by default,
        the ``FakeModelRouter()`` argument).
        """
        return stop_message(
            self._script.unmatched if self.assert_all_prompts_matched else (),
            self._blocked,
            self._script.unused(optional=False) if self.assert_all_replies_used else (),
            opt_out or _CONTEXT_OPT_OUT,
        )

    # -- answering ---------------------------------------------------------------------------

    def _stand_in(self, model_id: str, installed: llm.AsyncModel | None, /) -> FakeAsyncModel:
        real_id = installed.model_id if installed is not None else model_id
        fake = self._fakes.get(real_id)
        if fake is None:
            assert self._activation is not None, "it stands in for models only while active"
            fake = FakeAsyncModel(real_id, installed, self._responder.answer, self._activation)
            self._fakes[real_id] = fake
        return fake

    def _refuse(self, model: object) -> BaseException:
        model_id = getattr(model, "model_id", None)
        description = f"{model_id!r} ({type(model).__name__})"
        self._blocked.append(description)
        return RealModelRequestError(blocked_message(description))

    def _refuse_embedding(self, model: object, method: str) -> BaseException | None:
        model_id = getattr(model, "model_id", None)
        if model_id in self.allow_embedding_models:
            return None
        description = f"{model_id!r} ({type(model).__name__}.{method})"
        self._blocked.append(description)
        return RealModelRequestError(embedding_blocked_message(description, model_id))
