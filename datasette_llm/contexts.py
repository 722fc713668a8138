"""Entering the context managers the ``llm_prompt_context`` hooks gave, around one prompt.

``send_within`` enters each factory's context manager as a nested ``async with``, outermost
first, and sends and records the prompt inside the innermost one.

Hooks nearly always build their factory with ``contextlib.asynccontextmanager``, a new one for
every prompt. For the usual case of exactly one such factory, the wrapped model's ``prompt()``
drives the factory's async generator itself instead: it takes the generator function from
``generator_function_of``, advances the generator to its ``yield``, sends the prompt, then
advances it past the ``yield``, which is what ``contextlib``'s context manager object does,
without building that object and running its two coroutines (about 2.5 µs of every prompt).
If the prompt raises, ``leave_raising`` hands the generator to ``contextlib``'s own
``__aexit__``, so the exception is thrown in, suppressed or re-raised exactly as by
``async with``; ``DIDNT_YIELD`` and ``not_stopped`` fail as ``contextlib`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import FunctionType
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:
    from llm import AsyncConversation, AsyncModel, AsyncResponse

    from .hooks import PromptContextFactory
    from .results import PromptResult

__all__ = ["DIDNT_YIELD", "generator_function_of", "leave_raising", "not_stopped", "send_within"]

GeneratorFunction = Callable[["PromptResult"], AsyncGenerator[object, None]]

DIDNT_YIELD: Final = "generator didn't yield"
"""contextlib's message when the generator finishes before its ``yield``."""


async def _probe(result: object) -> AsyncIterator[None]:
    yield


_PROBE_WRAPPER: Final = contextlib.asynccontextmanager(_probe)
_WRAPPER_CODE: Final = _PROBE_WRAPPER.__code__
# contextlib's context manager class, whose ``__aexit__`` ``leave_raising`` runs.
_MANAGER_CLASS: Final[Any] = getattr(contextlib, "_AsyncGeneratorContextManager", None)


def _func_cell() -> int | None:
    """Where ``asynccontextmanager``'s wrapper keeps the generator function, if it can be used.

    ``None`` if this Python's ``contextlib`` is not built as expected (no
    ``_AsyncGeneratorContextManager``, or the wrapper keeps the function elsewhere): then
    ``generator_function_of`` finds nothing and every factory is entered with ``async with``.
    """
    wrapper = _PROBE_WRAPPER
    freevars = wrapper.__code__.co_freevars
    if _MANAGER_CLASS is None or "func" not in freevars or wrapper.__closure__ is None:
        return None
    index = freevars.index("func")
    return index if wrapper.__closure__[index].cell_contents is _probe else None


_FUNC_CELL: Final = _func_cell()


def generator_function_of(factory: object) -> GeneratorFunction | None:
    """Return the async generator function ``factory`` wraps, or ``None``.

    Only a plain function made by ``@asynccontextmanager`` qualifies: not a bound method
    (calling its generator function would drop ``self``), nor anything else callable.
    """
    if _FUNC_CELL is None or type(factory) is not FunctionType:
        return None
    closure = factory.__closure__
    if factory.__code__ is not _WRAPPER_CODE or closure is None:
        return None
    generator_function: GeneratorFunction = closure[_FUNC_CELL].cell_contents
    return generator_function


async def leave_raising(generator: AsyncGenerator[object, None], error: BaseException) -> bool:
    """Leave with ``error`` in flight, through ``contextlib``'s own code; ``True``: suppressed."""
    manager = _MANAGER_CLASS.__new__(_MANAGER_CLASS)
    manager.gen = generator
    suppressed: bool = await manager.__aexit__(type(error), error, error.__traceback__)
    return suppressed


async def not_stopped(generator: AsyncGenerator[object, None]) -> NoReturn:
    """Fail as ``contextlib`` does when the generator yields a second time."""
    try:
        raise RuntimeError("generator didn't stop")
    finally:
        await generator.aclose()


async def send_within(
    factories: list[PromptContextFactory],
    result: PromptResult,
    target: AsyncModel | AsyncConversation,
    prompt: str | None,
    merged: dict[str, Any],
    index: int = 0,
) -> AsyncResponse | None:
    """Enter ``factories[index:]``'s context managers, send the prompt inside, record it.

    Returns the response, or ``None`` only when a context manager suppressed the prompt's
    exception.
    """
    if index == len(factories):
        sent = target.prompt(prompt, **merged)
        await sent
        await result._add_response(sent)
        return sent
    response: AsyncResponse | None = None  # stays None if the exception is suppressed
    async with factories[index](result):
        response = await send_within(factories, result, target, prompt, merged, index + 1)
    return response
