"""The wrapped model, conversation and chain: llm's objects whose prompts take the one prompt path.

However it is consumed (``async for``, ``text()``, ``astream_events()``, ``responses()``), a
chain is one attempt up to its first item: when a step fails before anything has reached the
caller, the chain goes on, on the same model or the next fallback
(``datasette_llm.prompting.attempts``), from that step: the first step starts again, a later one
is sent with the messages llm built for it, so no tool runs twice. Once an item has reached the
caller, a failure ends the chain: no text is repeated. Each step's request holds a place under
its model's limits (``rpm``, ``concurrency``) until its response has completed, or has been
closed when its caller left the chain part way; the prompt's deadline bounds the whole chain,
and time running out while no request is under way (a tool running, a step waiting for its
place) ends it with ``timeout``, no row, no retry; a spent budget refuses it before anything is
sent, and each later step is admitted under the budget before it is sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from ..provider_errors import ProviderError, classify
from .attempts import Clock, Settle, cooled_meanwhile, run_attempts, within
from .clients import OpenAttempt
from .limits import CooledMeanwhile, Gate, LimitsTimeout, Release, gate_for
from .metering import Meter, Started
from .results import Group
from .send import (
    Sender,
    Target,
    in_conversation,
    prompt_model,
    send,
)

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncConversation, AsyncResponse
    from llm.models import AsyncChainResponse
    from llm.parts import StreamEvent

    from ..actors import Actor
    from ..routing.route import Resolution, Routed
    from .results import PromptContextFactory, PromptResult
    from .send import Target

__all__ = [
    "ChainStarter",
    "WrappedAsyncModel",
    "WrappedChainResponse",
    "WrappedConversation",
    "wrap",
]


# The wrapped chain.

ITERATED_ONCE: Final = (
    "Chain responses can only be iterated once: call model.chain() again for a new chain."
)
_END: Final = object()  # a stream that ended before its first item

ChainStarter = Callable[["Routed", "list[Any] | None"], "AsyncChainResponse"]
"""Start llm's chain on the routed model (of the attempt), with its key and options; given
messages, from them (the messages of a failed later step) instead of the chain's prompt."""

Item = TypeVar("Item")


class _Ended(Exception):
    """Raised by a chain's attempt to end the chain with ``failure`` at once, as no
    provider's failure is (no retry, no fallback, no row): its time ran out while a tool ran."""

    def __init__(self, failure: ProviderError) -> None:
        super().__init__(failure)
        self.failure = failure


class _Primed(Generic[Item]):
    """A stream whose first item has arrived, and the attempt its requests belong to."""

    __slots__ = ("attempt", "first", "rest")

    def __init__(self, first: object, rest: AsyncIterator[Item], attempt: OpenAttempt) -> None:
        self.first = first
        self.rest = rest
        self.attempt = attempt


class WrappedChainResponse:
    """llm's ``AsyncChainResponse`` with the ``llm_prompt_context`` hooks around its iteration.

    The hooks' context managers are entered when iteration starts and left after the last
    response, or with the error that stopped it: when ``text()``, ``async for`` or
    ``astream_events()`` fail or are cancelled mid-stream, the hooks' contexts exit with that
    error before it reaches the caller. Those three and ``responses()`` (which yields each
    response once it has completed, as ``prompt()`` returns one) retry and fall back until
    the first item reaches the caller. A chain may be iterated once. Any other attribute is
    llm's.
    """

    def __init__(
        self,
        target: Target,
        start: ChainStarter,
        prompt: str | None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._target = target
        self._start = start
        self._prompt = prompt
        self._result = target.result(is_chain=True)
        # The chain's prompt and options (its max_tokens) make its estimate for the budget.
        self._meter = Meter(
            target.datasette,
            target.routed,
            target.actor,
            self._result,
            prompt=prompt,
            options=kwargs,
        )
        self._started = Started.now(1, None)  # of the attempt under way; then of each step
        self._hook_error: BaseException | None = None
        self._clock = Clock(None, 0.0)  # the call's bounds, from when its iteration starts
        self._lease: Release | None = None  # the place the attempt took for the first step
        self._in_flight = False  # a step's request is under way: its response has not completed
        self._step: AsyncResponse | None = None  # the response of the step under way
        self._attempt_began = 0.0  # time.monotonic() when the attempt under way began
        self._open: OpenAttempt | None = None  # the attempt under way, once it has begun
        self._consumed = False
        self._attach(target.routed, target.factories(prompt), None)

    def _attach(
        self, routed: Routed, factories: list[PromptContextFactory], resume: list[Any] | None
    ) -> None:
        """Start llm's chain on ``routed``: a new attempt, whose iteration has not begun."""
        chain = self._start(routed, resume)
        self._routed = routed
        self._chain = chain
        self._factories = factories
        self._iteration: AsyncGenerator[AsyncResponse, None] | None = None
        self._suspended = False  # the iteration waits at a yield: an error can be thrown in
        self._in_flight = False
        self._result.chain_complete = False
        self._inner_responses: Callable[[], AsyncGenerator[AsyncResponse, None]] = chain.responses  # type: ignore[assignment]  # llm annotates an AsyncIterator
        # llm's own text()/__aiter__/astream_events() call responses(): route them here.
        chain.responses = self._steps  # type: ignore[method-assign]  # hooks see every step

    @property
    def result(self) -> PromptResult:
        """The ``PromptResult`` the hooks see."""
        return self._result

    def responses(self) -> AsyncIterator[AsyncResponse]:
        """Iterate each ``AsyncResponse`` of the chain once it has completed, hooks entered
        around the iteration; retried and fallen back as the other ways until the first."""
        self._consume()
        return self._stream(self._completed, chunks=False)

    async def _completed(self, chain: AsyncChainResponse) -> AsyncIterator[AsyncResponse]:
        """Each response of ``chain`` once it has completed (run by its step's attempt), its
        chunks counted as they arrive: a step cancelled part way is charged for them."""
        async for response in chain.responses():
            async for _ in response:
                self._started.received.chunk()
            yield response

    def _consume(self) -> None:
        """Refuse a second iteration; count the calling task in the group."""
        if self._consumed:
            raise RuntimeError(ITERATED_ONCE)
        self._target.enlist()
        self._consumed = True

    def _steps(self) -> AsyncIterator[AsyncResponse]:
        """llm's chain's ``responses()``: each step, under the hooks and the model's limits."""
        if self._iteration is not None:
            raise RuntimeError(ITERATED_ONCE)
        self._iteration = self._run()
        self._target.open_chains.add(self)
        return self._iteration

    async def _run(self) -> AsyncGenerator[AsyncResponse, None]:
        target = self._target
        try:
            async with AsyncExitStack() as stack:
                try:
                    for factory in self._factories:
                        await stack.enter_async_context(factory(self._result))
                except BaseException as error:
                    self._hook_error = error
                    raise
                try:
                    async with aclosing(self._inner_responses()) as inner:
                        step = 0
                        async for response in inner:
                            step += 1
                            if step > 1:  # a later step: a request of its own, under the budget
                                self._meter.settle()  # the last step is charged: its hold goes
                                await self._meter.admit()
                            release = await self._place()
                            if step > 1:
                                begun = self._started
                                self._started = Started.now(begun.attempt, begun.fell_back_from)
                                if self._open is not None:
                                    self._open.watch(self._started.received, self._routed.model)
                            self._started.received.sent = True  # its place taken: llm sends it
                            try:
                                # llm does not annotate on_done; the place is held until then.
                                await response.on_done(self._step_done(release))  # type: ignore[no-untyped-call]
                                await self._result.add_response(target.answerable(response))
                                await self._meter.response(self._routed, response, self._started)
                                self._in_flight = self._suspended = True
                                self._step = response
                                try:
                                    yield response
                                finally:
                                    self._suspended = False
                            finally:
                                if not self._in_flight or not _under_way(response):
                                    release()
                                elif target.group is not None:
                                    # Left part way in a group, which finishes every response:
                                    # read to its end now, holding its place until then, and
                                    # recorded once it has ended, as it ended.
                                    ended = functools.partial(
                                        self._ended_in_group, self._routed, self._started
                                    )
                                    target.finish_later(response, release, ended)
                                else:  # left part way: its request ends now
                                    await _close(response, self._open)
                                    release()
                finally:
                    # Before the hooks' contexts exit, so they see it.
                    self._result.chain_complete = True
        finally:
            target.open_chains.discard(self)

    def _left_to_group(self) -> bool:
        """Whether the step under way, its caller gone, is the group's to read to its end
        (and to record then, answered with its usage, or failed)."""
        step = self._step
        return (
            self._target.group is not None
            and self._in_flight
            and step is not None
            and _under_way(step)
        )

    async def _ended_in_group(
        self, routed: Routed, started: Started, error: BaseException | None
    ) -> None:
        """Record a step the group read to its end, its chain gone: once answered, the meter
        has recorded it with its usage (``Meter.response``); else as it failed (for its
        model's limits too: a rate limit cools it down), or as what it received when
        cancelled."""
        if error is None or started.received.recorded:
            return
        if isinstance(error, Exception):
            resolution = routed.resolution
            failure = classify(error, resolution.model_id, resolution.key.described())
            self._meter.failure(routed, started, failure.kind, failure)
            await self._gate(routed).record(failure)
        else:
            self._meter.cancelled(routed, started)

    def _failed_after_all(self, failure: ProviderError) -> None:
        """The attempt under way, settled as answered once its first item came, failed later
        (a stream cut, the deadline): ``result.attempts`` says so, with its whole duration."""
        attempts = self._result.attempts
        if attempts and attempts[-1].error is None:
            duration = time.monotonic() - self._attempt_began
            attempts[-1] = dataclasses.replace(attempts[-1], error=failure.kind, duration=duration)

    def _timed_out(self, error: Exception) -> ProviderError:
        """The ``timeout`` a chain ends with when its time ran out while none of its requests
        was under way (``error``): a tool was running, or a later step waited for its place
        under the model's limits. It is no request's failure: no row, no retry."""
        model_id = self._routed.resolution.model_id
        return ProviderError(
            "timeout",
            model_id,
            f"the chain on {model_id!r} ran out of time while none of its requests was under way "
            "(a tool running, or a step waiting for its place under the model's limits); not "
            "tried again, which would run its tools again",
        )

    def _gate(self, routed: Routed) -> Gate:
        return gate_for(self._target.datasette, routed)

    async def _place(self) -> Release:
        """The place under the model's limits for the step about to be sent: the one its
        attempt took for the first step, else a new one (each request passes rpm too).

        Raises:
            ProviderError: ``timeout``: the wait would pass the deadline.
        """
        lease, self._lease = self._lease, None
        if lease is not None:
            return lease
        return await self._gate(self._routed).acquire(self._clock.left())

    def _step_done(self, release: Release) -> Callable[[AsyncResponse], None]:
        def done(_response: AsyncResponse) -> None:
            self._in_flight = False
            release()

        return done

    async def abandon(self, error: BaseException | None) -> None:
        """End an iteration its caller left: the hooks' contexts exit with ``error``.

        ``None`` closes it (they see ``GeneratorExit``). An error a hook raises while exiting
        propagates; the one thrown in does not.
        """
        iteration = self._iteration
        if iteration is None or not self._suspended:
            return  # not started, running (it sees its own error), or ended
        if error is None:
            await iteration.aclose()
            return
        try:
            await iteration.athrow(error)
        except StopAsyncIteration:
            pass  # a hook suppressed it
        except BaseException as raised:
            if raised is not error:
                raise

    async def _stream(
        self,
        open_stream: Callable[[AsyncChainResponse], AsyncIterator[Item]],
        *,
        chunks: bool = True,
    ) -> AsyncIterator[Item]:
        """Stream llm's chain, starting it again on failure until its first item arrives.

        ``chunks``: each item is a chunk received (else ``open_stream`` counts them).
        """

        async def once(
            routed: Routed, timeout: float | None, started: Started, settle: Settle
        ) -> _Primed[Item]:
            self._started, self._attempt_began = started, started.clock
            if routed is not self._routed or self._iteration is not None:
                steps = self._result.responses
                # A later step failed: its tools' results are in the messages llm built for it.
                resume = list(steps[-1].prompt.messages) if len(steps) > 1 else None
                self._result.withdraw_responses(last_only=resume is not None)
                factories = self._target.factories(self._prompt, routed.resolution.model_id)
                self._attach(routed, factories, resume)
            gate = self._gate(routed)
            self._lease = await gate.acquire(self._clock.left())
            if cooled_meanwhile(gate, self._clock):  # while it waited for its place
                lease, self._lease = self._lease, None
                lease()
                raise CooledMeanwhile
            # Every request of the attempt's steps: the attempt's timeout, its clients in use
            # until its stream has ended (``_stream`` ends it), else until it has failed.
            attempt = self._open = OpenAttempt(timeout)
            attempt.watch(started.received, routed.model)  # counts its requests, if it can
            primed = False
            stream = open_stream(self._chain)
            try:
                with attempt.running():
                    first = await within(_first(stream), self._clock.bound(timeout))
                if first is not _END and chunks:
                    started.received.chunk()
                primed = True
            except Exception as error:
                failure: ProviderError | None = None
                if error is self._hook_error:
                    pass  # a hook's, as it is
                elif not self._in_flight and isinstance(error, TimeoutError | LimitsTimeout):
                    # No request under way: the time ran out while a tool ran, or a later step
                    # waited for its place. No row; not retried (its tools would run again).
                    ended = self._timed_out(error)
                    await self.abandon(ended)
                    raise _Ended(ended) from None
                elif isinstance(error, ProviderError):
                    failure = error
                elif self._in_flight:
                    key_from = routed.resolution.key.described()
                    failure = classify(error, routed.resolution.model_id, key_from)
                # else no request's: a tool's (llm.PauseChain...), as it is
                if failure is not None:
                    await settle(failure)  # before the hooks exit: they see it
                await self.abandon(error)
                if failure is None or failure is error:
                    raise
                raise failure from failure.__cause__  # the provider's error, redacted
            except BaseException as error:
                # Cancelled: the iteration, waiting at a step, ends now (the step gives back
                # its place under the limits; the hooks exit with the cancellation).
                if self._started is not started:
                    # At a later step (the first was a tool call, recorded): its request is
                    # recorded here, if it left; the attempt's own is the caller's to record.
                    self._meter.cancelled(self._routed, self._started)
                await self.abandon(error)
                raise
            finally:
                lease, self._lease = self._lease, None
                if lease is not None:
                    lease()  # the first step never took it
                if not primed:
                    attempt.end()
            return _Primed(first, stream, attempt)

        self._clock = clock = Clock.start(self._meter)
        # The budget's reservation is held until the chain has ended (each later step holds
        # its own, from when it is admitted until the next: ``_run``).
        try:
            primed = await run_attempts(self._meter, once, clock, slots=False, settle=False)
        except _Ended as ended:
            raise ended.failure.with_attempts(tuple(self._result.attempts)) from None
        failure: ProviderError | None = None
        rest, attempt = primed.rest, primed.attempt
        try:
            if primed.first is _END:
                return
            yield primed.first  # type: ignore[misc]  # not _END: an item of the stream
            while True:  # the deadline bounds the whole chain, every step and chunk
                try:
                    with attempt.running():
                        item = await within(rest.__anext__(), clock.left())
                except StopAsyncIteration:
                    break
                if chunks:
                    self._started.received.chunk()
                yield item
        except Exception as error:
            if self._in_flight:  # a request's failure: its row, its model's limits
                resolution = self._routed.resolution
                failure = classify(error, resolution.model_id, resolution.key.described())
                await self._gate(self._routed).record(failure)
                self._meter.failure(self._routed, self._started, failure.kind, failure)
            elif isinstance(error, TimeoutError | LimitsTimeout):
                # The deadline passed while a tool ran or a step waited for its place: no
                # request failed, so no row, and nothing for the model's limits.
                failure = self._timed_out(error)
            else:
                await self.abandon(error)
                raise  # no request's: a tool's error, or the budget refusing a later step
            self._failed_after_all(failure)
            await self.abandon(error)  # the hooks exit seeing the failure in the result
            if failure.kind == "unknown":
                raise
            failure.with_attempts(tuple(self._result.attempts))
            if failure is error:
                raise
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError | GeneratorExit):
                if not self._left_to_group():  # else recorded once the group has read it
                    self._meter.cancelled(self._routed, self._started)  # what it received
            await self.abandon(error)
            raise
        finally:
            attempt.end()  # its stream has ended: its clients may be closed
            self._meter.settle()  # its records count now, in place of what it held
        if failure is not None:
            # Raised here, not in the handler: the provider's own error, unredacted, is not
            # its __context__ (its __cause__ is the redacted copy).
            raise failure

    def __aiter__(self) -> AsyncIterator[str]:
        """Stream the text of every response of the chain."""
        self._consume()
        return self._stream(lambda chain: chain.__aiter__())

    def astream_events(self) -> AsyncIterator[StreamEvent]:
        """Yield llm's ``StreamEvent`` of every response of the chain."""
        self._consume()
        return self._stream(_events)

    async def text(self) -> str:
        """Run the whole chain and return its text."""
        return "".join([chunk async for chunk in self])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    def __repr__(self) -> str:
        return (
            f"<WrappedChainResponse model_id={self._routed.resolution.model_id!r} "
            f"purpose={self._target.purpose!r} started={self._iteration is not None}>"
        )


def _events(chain: AsyncChainResponse) -> AsyncIterator[StreamEvent]:
    stream: Callable[[], AsyncIterator[StreamEvent]] = chain.astream_events  # llm leaves it untyped
    return stream()


def _under_way(response: AsyncResponse) -> bool:
    """Whether ``response``'s model is still sending it: neither completed nor ended by an
    error or a cancellation (llm's generator for it, ``_generator``, is still suspended)."""
    generator = getattr(response, "_generator", None)
    return generator is not None and getattr(generator, "ag_frame", None) is not None


async def _close(response: AsyncResponse, attempt: OpenAttempt | None) -> None:
    """End ``response``'s request, left part way by its caller (``break``, ``aclose()``),
    before its place under the model's limits is given back: its model's generator is closed,
    as llm's own ``astream_events()`` closes it (llm has no public way to close a response; the
    generator is the one it keeps for it, ``_generator``), and, for an adapted model, the HTTP
    response too, so the connection closes now and the provider stops sending (the client
    library would close it only once the garbage collector has collected its stream)."""
    generator: AsyncGenerator[object, None] | None = getattr(response, "_generator", None)
    if generator is not None and not getattr(generator, "ag_running", False):
        await generator.aclose()  # (running: it is ending of its own, as a cancellation ends it)
    if attempt is not None:
        await attempt.close_responses()


async def _first(stream: AsyncIterator[Item]) -> object:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


# The wrapped model and conversation.


class _Prompting:
    """What the wrapped model and the wrapped conversation share: where prompts go."""

    _target: Target
    _sender: Sender

    @property
    def model_id(self) -> str:
        """The id of the model."""
        return self._target.model_id

    @property
    def purpose(self) -> str | None:
        """The purpose name the model was asked for, or ``None``."""
        return self._target.purpose

    @property
    def resolution(self) -> Resolution:
        """How routing chose the model."""
        return self._target.resolution

    @property
    def group(self) -> Group | None:
        """The ``Group`` the prompts belong to, inside ``LLM.group()``; else ``None``."""
        return self._target.group

    async def prompt(self, prompt: str | None = None, **kwargs: Any) -> AsyncResponse:
        """Run a prompt through the hooks and return llm's response once it has completed.

        ``kwargs`` are passed through to llm's ``prompt()`` of the model or conversation
        (``system=``, ``attachments=``, ``schema=``, ``tools=``, model options...), which is why
        they are typed ``Any``. Configured ``options`` are merged in; the caller's values win.
        The response's ``reply()`` takes the same path: hooks, routed key and options.
        """
        return await send(self._target, self._sender, prompt, kwargs)


class WrappedConversation(_Prompting):
    """llm's ``AsyncConversation``; every ``prompt()`` and ``chain()`` runs the hooks.

    Attributes:
        model_id: The id of the model this conversation talks to.
        purpose: The purpose name, or ``None``.
        resolution: How routing chose the model.
        group: The ``Group`` its prompts belong to, inside ``LLM.group()``.
    """

    def __init__(self, target: Target, conversation: AsyncConversation) -> None:
        self._target = target
        self._conversation = conversation
        self._sender = in_conversation(conversation)

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain in this conversation; the hooks wrap its iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        target, conversation = self._target, self._conversation

        def start(routed: Routed, resume: list[Any] | None) -> AsyncChainResponse:
            on_model = conversation
            if routed.model is not conversation.model:
                on_model = dataclasses.replace(conversation, model=routed.model)
            if resume is None:
                return on_model.chain(prompt, **target.chain_kwargs(kwargs, routed))
            going_on = {**kwargs, "messages": resume}
            going_on.pop("tool_results", None)  # in the messages already
            return on_model.chain(None, **target.chain_kwargs(going_on, routed))

        return WrappedChainResponse(target, start, prompt, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conversation, name)

    def __repr__(self) -> str:
        return f"<WrappedConversation {self.model_id!r} purpose={self.purpose!r}>"


class WrappedAsyncModel(_Prompting):
    """An llm async model whose prompts run datasette-llm's hooks.

    Attributes:
        model_id: The id of the model.
        purpose: The purpose name the model was asked for, or ``None``.
        resolution: How routing chose the model.
        group: The ``Group`` its prompts belong to, inside ``LLM.group()``.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        # Third-party code reads getattr(model, "_model", model) to reach llm's model.
        self._model = target.routed.model
        self._sender = prompt_model

    def conversation(self) -> WrappedConversation:
        """Start a conversation whose every prompt runs the hooks."""
        return WrappedConversation(self._target, self._model.conversation())

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain; the hooks wrap its whole iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        return self.conversation().chain(prompt, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<WrappedAsyncModel {self.model_id!r} purpose={self.purpose!r} "
            f"step={self.resolution.step!r}>"
        )


def wrap(datasette: Datasette, routed: Routed, actor: Actor | None) -> WrappedAsyncModel:
    """Wrap the model routing chose, so its prompts run the hooks."""
    return WrappedAsyncModel(Target(datasette, routed, actor, None))
