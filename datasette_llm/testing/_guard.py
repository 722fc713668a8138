"""Block every request to a real llm model while a router is active."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from llm import models as llm_models

from ._fake_model import FakeAsyncModel

__all__ = ["block_real_requests"]

# The two places llm 0.36 calls a model's execute(): async and sync responses.
_ASYNC_START: tuple[type[Any], str] = (llm_models.AsyncResponse, "_ensure_async_generator")
_SYNC_START: tuple[type[Any], str] = (llm_models.Response, "_iter_events")


def block_real_requests(refuse: Callable[[object], BaseException]) -> Callable[[], None]:
    """Make any response whose model is not a ``FakeAsyncModel`` raise ``refuse(model)``.

    Returns the function that restores llm's behaviour.
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

    def restore() -> None:
        setattr(async_class, async_name, original_async)
        setattr(sync_class, sync_name, original_sync)

    return restore
