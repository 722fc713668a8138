"""The wrapped chain: llm's ``AsyncChainResponse`` with the hooks around its whole iteration."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from llm import AsyncResponse
    from llm.models import AsyncChainResponse

    from .results import PromptResult
    from .targets import Target

__all__ = ["WrappedChainResponse"]


ITERATED_ONCE: Final = (
    "Chain responses can only be iterated once: call model.chain() again for a new chain."
)


class WrappedChainResponse:
    """llm's ``AsyncChainResponse`` with the ``llm_prompt_context`` hooks around its iteration.

    The hooks' context managers are entered when iteration starts and left after the last
    response, or with the error that stopped it: when ``text()``, ``async for`` or
    ``astream_events()`` fail or are cancelled mid-stream, the hooks' contexts exit with that
    error before it reaches the caller. ``responses()`` may be iterated once; any other
    attribute is llm's.
    """

    def __init__(self, target: Target, chain: AsyncChainResponse, prompt: str | None) -> None:
        self._target = target
        self._chain = chain
        self._factories = target.factories(prompt)
        self._result = target.result(is_chain=True)
        self._iteration: AsyncGenerator[AsyncResponse, None] | None = None
        self._suspended = False  # the iteration waits at a yield: an error can be thrown in
        self._inner_responses: Callable[[], AsyncGenerator[AsyncResponse, None]] = chain.responses  # type: ignore[assignment]  # llm annotates an AsyncIterator
        # llm's own text()/__aiter__/astream_events() call self.responses(): route them here.
        chain.responses = self.responses  # type: ignore[method-assign]  # hooks see every step

    @property
    def result(self) -> PromptResult:
        """The ``PromptResult`` the hooks see."""
        return self._result

    def responses(self) -> AsyncIterator[AsyncResponse]:
        """Iterate each raw ``AsyncResponse`` of the chain, hooks entered around the iteration."""
        if self._iteration is not None:
            raise RuntimeError(ITERATED_ONCE)
        self._target.enlist()
        self._iteration = self._run()
        self._target.open_chains.add(self)
        return self._iteration

    async def _run(self) -> AsyncGenerator[AsyncResponse, None]:
        target = self._target
        try:
            async with AsyncExitStack() as stack:
                for factory in self._factories:
                    await stack.enter_async_context(factory(self._result))
                try:
                    async with aclosing(self._inner_responses()) as inner:
                        async for response in inner:
                            await self._result.add_response(target.answerable(response))
                            self._suspended = True
                            try:
                                yield response
                            finally:
                                self._suspended = False
                finally:
                    # Before the hooks' contexts exit, so they see it.
                    self._result.chain_complete = True
        finally:
            target.open_chains.discard(self)

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

    async def __aiter__(self) -> AsyncIterator[str]:
        """Stream the text of every response of the chain."""
        chunks: AsyncIterator[str] = self._chain.__aiter__()
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as error:
            await self.abandon(error)
            raise

    async def astream_events(self) -> AsyncIterator[Any]:
        """Yield llm's ``StreamEvent`` of every response of the chain."""
        stream: Callable[[], AsyncIterator[Any]] = self._chain.astream_events  # llm: untyped
        events = stream()
        try:
            async for event in events:
                yield event
        except BaseException as error:
            await self.abandon(error)
            raise

    async def text(self) -> str:
        """Run the whole chain and return its text."""
        try:
            text: str = await self._chain.text()
        except BaseException as error:
            await self.abandon(error)
            raise
        return text

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    def __repr__(self) -> str:
        return (
            f"<WrappedChainResponse model_id={self._target.model_id!r} "
            f"purpose={self._target.purpose!r} started={self._iteration is not None}>"
        )
