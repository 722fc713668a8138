"""llm's installed models, as a snapshot rebuilt only when what it depends on changes.

llm re-runs every plugin's ``register_models`` hook and re-reads ``aliases.json`` on each
``get_async_model()``. This module does that once per Datasette and reuses the result until a
plugin is registered or unregistered on ``llm.plugins.pm``, ``aliases.json`` or
``extra-openai-models.yaml`` change, or ``LLM_USER_PATH`` points elsewhere.

A test double (``FakeModelRouter``) may stand in for every model that routing looks up by name,
through the public switch ``stand_in_for_models``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, cast

import llm
from llm import plugins as llm_plugins

from ..errors import Substituted, nearest, quoted
from ..state import Slot, state_of

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

__all__ = [
    "ModelRegistry",
    "ModelStandIn",
    "OptionProblem",
    "build_registry",
    "current_registry",
    "find_model",
    "lookup_model",
    "option_problems",
    "stand_in_for_models",
]


class ModelStandIn(Protocol):
    """What answers for every model while ``stand_in_for_models`` is on (a test double)."""

    def __call__(self, name: str, installed: AsyncModel | None, /) -> AsyncModel | None:
        """Return the model to use for ``name`` (an id or alias), or ``None`` for none;
        ``installed`` is llm's own model of that name, or ``None`` if none is installed."""
        ...


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

    def canonical(self, name: str) -> str:
        """Return the model id that ``name`` (an id or an alias) stands for; else ``name``."""
        model = self.by_name.get(name)
        return name if model is None else model.model_id


# What the snapshot was built from (see _cache_key), and the snapshot.
_REGISTRY: Final[Slot[tuple[tuple[object, ...], ModelRegistry]]] = Slot("llm's models")
# The active stand-ins, innermost last: for the whole process, as stamina's test mode is, since a
# test double stands in for the models of every Datasette.
_stand_ins: list[ModelStandIn] = []

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


# llm does not annotate these two.
_user_dir = cast("Callable[[], object]", llm.user_dir)
_load_plugins = cast("Callable[[], None]", llm_plugins.load_plugins)


@functools.lru_cache(maxsize=1)
def _default_user_dir() -> str:
    return str(_user_dir())


@functools.lru_cache(maxsize=16)
def _watched_files(directory: str) -> tuple[str, str]:
    """The files in llm's user directory whose content changes the registry."""
    return os.path.join(directory, "aliases.json"), os.path.join(
        directory, "extra-openai-models.yaml"
    )


def _cache_key() -> tuple[object, ...]:
    _load_plugins()
    directory = os.environ.get("LLM_USER_PATH") or _default_user_dir()
    aliases, extra_models = _watched_files(directory)
    return (
        tuple(llm_plugins.pm.hook.register_models.get_hookimpls()),
        directory,
        _file_stamp(aliases),
        _file_stamp(extra_models),
    )


def build_registry() -> ModelRegistry:
    """Return a new snapshot of llm's async models, as llm lists them now.

    ``current_registry`` keeps one per Datasette; this is for code that has none.
    """
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


def current_registry(datasette: Datasette) -> ModelRegistry:
    """Return ``datasette``'s snapshot of llm's models, rebuilt if a plugin, alias or path changed.

    Each Datasette keeps its own in its ``State``, collected with it, though what a snapshot is
    built from (llm's plugins, its user directory) is the same for the whole process.
    """
    state = state_of(datasette)
    key = _cache_key()
    cached = state.get(_REGISTRY)
    if cached is not None and cached[0] == key:
        return cached[1]
    return state.put(_REGISTRY, (key, build_registry()))[1]


def find_model(name: str, registry: ModelRegistry) -> AsyncModel | None:
    """Return the async model for an id or alias, or ``None`` if none is installed.

    While a test double stands in for the models (``stand_in_for_models``), it answers for
    every name.
    """
    installed = registry.by_name.get(name)
    if _stand_ins:
        return _stand_ins[-1](name, installed)
    return installed


def shown_name(name: str) -> str:
    """A model name as llm's messages show it: bare, except a ``$env``/``$file`` value."""
    return quoted(name) if isinstance(name, Substituted) else name


def lookup_model(name: str, registry: ModelRegistry) -> AsyncModel:
    """Return the async model for an id or alias, raising llm's ``UnknownModelError``."""
    model = find_model(name, registry)
    if model is not None:
        return model
    if name in registry.sync_only:
        raise llm.UnknownModelError(
            f"Unknown async model (sync model exists): {name}. "
            "Install a plugin version that provides an async model for it."
        )
    raise llm.UnknownModelError(
        f"Unknown model: {shown_name(name)}. Run 'llm models' to list installed models, or install "
        "the llm plugin that provides it."
    )


@contextmanager
def stand_in_for_models(stand_in: ModelStandIn) -> Iterator[None]:
    """Let ``stand_in`` answer for every model routing looks up, inside the ``with`` block.

    A switch for test doubles, as ``stamina.set_testing`` is for retries: while it is on,
    ``LLM.model()``, ``LLM.resolve()`` and every fallback get, for each model id or alias,
    the model ``stand_in`` returns, whether that model is installed or not; the routing rules
    still decide which name is asked for. Blocks nest: the innermost stand-in answers.
    ``FakeModelRouter`` is built on it.
    """
    _stand_ins.append(stand_in)
    try:
        yield
    finally:
        _stand_ins.remove(stand_in)


@dataclass(frozen=True, slots=True)
class OptionProblem:
    """Why a model does not take one of the options given for it.

    Attributes:
        option: The option's name (a dotted path for a nested value), or ``""`` for the whole.
        message: What is wrong, naming the model, and the options it accepts with their types.
    """

    option: str
    message: str


def option_problems(model: AsyncModel, options: Mapping[str, object]) -> list[OptionProblem]:
    """Check ``options`` against ``model``'s options (its pydantic ``Options`` class, as llm
    builds them for every prompt); return what is wrong, or ``[]``.

    The one check of a model's options: datasette.yaml's at startup and in ``datasette llm
    check``, the routing form's before it is stored, and a stored override's whenever what it
    lies over changes.
    """
    from pydantic import ValidationError

    options_class = model.Options
    fields = options_class.model_fields
    accepted = ", ".join(
        f"{name} ({_type_name(field.annotation)})" for name, field in fields.items()
    )
    try:
        options_class(**dict(options))
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            location = ".".join(str(part) for part in detail["loc"])
            if detail["type"] == "extra_forbidden":
                suggestion = nearest(location, list(fields))
                hint = f" Did you mean {suggestion!r}?" if suggestion else ""
                message = (
                    f"{quoted(model.model_id)} does not accept the option {location!r}.{hint} "
                    f"Options it accepts: {accepted or 'none'}."
                )
            else:
                field = fields.get(location.split(".")[0])
                expected = "" if field is None else f" (expected {_type_name(field.annotation)})"
                message = (
                    f"{quoted(model.model_id)} rejects the value "
                    f"{quoted(options.get(location))} for option {location!r}{expected}: "
                    f"{detail['msg']}."
                )
            problems.append(OptionProblem(location, message))
        return problems
    except Exception as error:  # a plugin's own validation
        return [OptionProblem("", f"{quoted(model.model_id)} rejects the options: {error}")]
    return []


def _type_name(annotation: object) -> str:
    """A field's type as the messages show it: ``float or none``, ``int``."""
    import types
    import typing

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    name = getattr(annotation, "__name__", None)
    return name if isinstance(name, str) else str(annotation)
