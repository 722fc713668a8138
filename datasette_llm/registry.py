"""A cached view of llm's model registry, rebuilt only when what it depends on changes.

llm re-runs every plugin's ``register_models`` hook and re-reads ``aliases.json`` on each
``get_async_model()``. This module does that once and reuses the result until a plugin is
registered or unregistered on ``llm.plugins.pm``, ``aliases.json`` or
``extra-openai-models.yaml`` change, or ``LLM_USER_PATH`` points elsewhere.

Checking costs two ``stat`` calls and a comparison of llm's list of ``register_models``
implementations. A plugin whose ``register_models`` lists different models from one call to the
next (one that asks a server, say) is only asked again when one of those things changes.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from llm import AsyncModel

__all__ = [
    "ModelOverride",
    "ModelRegistry",
    "canonical_ids",
    "current_registry",
    "lookup_model",
    "pop_model_override",
    "push_model_override",
]

ModelOverride = Callable[[str, "AsyncModel | None"], "AsyncModel | None"]
"""Given a model id and the installed model (or ``None``), return a replacement or ``None``."""


@dataclass(frozen=True, slots=True)
class ModelRegistry:
    """A snapshot of llm's async models.

    Attributes:
        models: Every async model, in llm's registry order.
        by_name: Each model by id and by every alias.
        sync_only: Ids and aliases that only have a synchronous model.
        keyed: The models that need an API key (``needs_key`` set), in registry order.
    """

    models: tuple[AsyncModel, ...]
    by_name: Mapping[str, AsyncModel]
    sync_only: frozenset[str]
    keyed: tuple[AsyncModel, ...] = ()


_cached: tuple[tuple[object, ...], ModelRegistry] | None = None
_overrides: list[ModelOverride] = []
_default_dir: str | None = None


# File systems keep coarse modification times: a file rewritten twice within one tick keeps its
# mtime. For a file modified this recently, the stamp includes its content (as git does).
_RACY_NS: Final = 3_000_000_000


def _file_stamp(path: str) -> tuple[object, ...] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    stamp: tuple[object, ...] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if time.time_ns() - stat.st_mtime_ns < _RACY_NS:
        try:
            with open(path, "rb") as file:
                stamp += (file.read(),)
        except OSError:
            return None
    return stamp


def _default_user_dir() -> str:
    global _default_dir
    if _default_dir is None:
        import llm

        user_dir = cast("Callable[[], object]", llm.user_dir)
        _default_dir = str(user_dir())
    return _default_dir


def _cache_key() -> tuple[object, ...]:
    from llm import plugins as llm_plugins

    load_plugins = cast("Callable[[], None]", llm_plugins.load_plugins)
    load_plugins()
    user_path = os.environ.get("LLM_USER_PATH")
    directory = _default_user_dir() if user_path is None else user_path
    aliases, extra_models = _watched_files(directory)
    return (
        tuple(llm_plugins.pm.hook.register_models._hookimpls),
        directory,
        _file_stamp(aliases),
        _file_stamp(extra_models),
    )


@functools.lru_cache(maxsize=16)
def _watched_files(directory: str) -> tuple[str, str]:
    """Return the paths of the files in llm's user directory that change the registry."""
    return (
        os.path.join(directory, "aliases.json"),
        os.path.join(directory, "extra-openai-models.yaml"),
    )


def _build() -> ModelRegistry:
    import llm

    models: list[AsyncModel] = []
    by_name: dict[str, AsyncModel] = {}
    sync_only: set[str] = set()
    for entry in llm.get_models_with_aliases():
        # llm annotates async_model as always set; it is None for sync-only models.
        async_model: AsyncModel | None = entry.async_model
        if async_model is None:
            sync_only.update([entry.model.model_id, *entry.aliases])
            continue
        models.append(async_model)
        for alias in entry.aliases:
            by_name[alias] = async_model
        by_name[async_model.model_id] = async_model
    return ModelRegistry(
        models=tuple(models),
        by_name=by_name,
        sync_only=frozenset(sync_only - set(by_name)),
        keyed=tuple(model for model in models if getattr(model, "needs_key", None)),
    )


def current_registry() -> ModelRegistry:
    """Return the registry snapshot, rebuilding it if a plugin, alias or path changed."""
    global _cached
    key = _cache_key()
    cached = _cached
    if cached is not None and cached[0] == key:
        return cached[1]
    registry = _build()
    _cached = (key, registry)
    return registry


def canonical_ids(names: frozenset[str]) -> frozenset[str]:
    """Return ``names`` plus the model id each installed alias among them stands for."""
    if not names:
        return names
    by_name = current_registry().by_name
    extra = {by_name[name].model_id for name in names if name in by_name}
    return names | extra if extra else names


def lookup_model(model_id: str) -> AsyncModel:
    """Return the async model for an id or alias, raising llm's ``UnknownModelError``."""
    model = current_registry().by_name.get(model_id)
    for override in reversed(_overrides):
        replacement = override(model_id, model)
        if replacement is not None:
            return replacement
    if model is not None:
        return model
    import llm

    if model_id in current_registry().sync_only:
        raise llm.UnknownModelError(
            f"Unknown async model (sync model exists): {model_id}. "
            "Install a plugin version that provides an async model for it."
        )
    raise llm.UnknownModelError(
        f"Unknown model: {model_id}. Run 'llm models' to list installed models, or install "
        "the llm plugin that provides it."
    )


def push_model_override(override: ModelOverride) -> None:
    """Route model lookups through ``override`` first (used by test doubles)."""
    _overrides.append(override)


def pop_model_override(override: ModelOverride) -> None:
    """Remove an override added with ``push_model_override``."""
    _overrides.remove(override)


def has_model_override() -> bool:
    """Return whether a model override (a test double) is active."""
    return bool(_overrides)
