"""Block every request to a real llm model while a router is active: prompts and embeddings."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from llm import models as llm_models

from ._fake_model import FakeAsyncModel

__all__ = ["RefuseEmbedding", "block_real_requests", "embedding_model_ids"]

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
