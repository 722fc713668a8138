"""The catalog of purposes registered by installed plugins, with collisions kept visible.

It is built once per Datasette, kept in its ``State``, and rebuilt when the
``register_llm_purposes`` implementations change (a plugin is registered or unregistered).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .._hooks import implementations
from ..log import logger
from ..state import Slot, state_of
from .hooks import call_register_llm_purposes
from .purposes import Purpose, PurposeCollision

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = ["get_purpose", "get_purpose_collisions", "get_purpose_owner", "get_purposes"]


@dataclass(frozen=True, slots=True)
class _Catalog:
    purposes: tuple[Purpose, ...]
    by_name: dict[str, Purpose]
    owners: dict[str, str]
    collisions: tuple[PurposeCollision, ...]


# The register_llm_purposes implementations the catalog was built from, and the catalog.
_CATALOG: Final[Slot[tuple[tuple[object, ...], _Catalog]]] = Slot("the registered purposes")
# Each collision logged so far, (name, kept owner, ignored owner): once per process, as the
# plugins that collide and the log are the process's (see datasette_llm.state).
_warned: set[tuple[str, str, str]] = set()


def _owner(purpose: Purpose, plugin_name: str) -> str:
    return purpose.owner or plugin_name


def _build(datasette: Datasette) -> _Catalog:
    purposes: list[Purpose] = []
    by_name: dict[str, Purpose] = {}
    owners: dict[str, str] = {}
    collisions: list[PurposeCollision] = []
    for plugin_name, purpose in call_register_llm_purposes(datasette):
        kept = by_name.get(purpose.name)
        if kept is None:
            by_name[purpose.name] = purpose
            owners[purpose.name] = _owner(purpose, plugin_name)
            purposes.append(purpose)
            continue
        if kept == purpose and owners[purpose.name] == _owner(purpose, plugin_name):
            continue
        collisions.append(
            PurposeCollision(
                name=purpose.name,
                kept=kept,
                ignored=purpose,
                kept_owner=owners[purpose.name],
                ignored_owner=_owner(purpose, plugin_name),
            )
        )
        warning_key = (purpose.name, owners[purpose.name], _owner(purpose, plugin_name))
        if warning_key not in _warned:
            _warned.add(warning_key)
            logger.warning(
                "Purpose %r is registered by both %r and %r; keeping the first (%r). "
                "Rename one of them, e.g. %r.",
                purpose.name,
                owners[purpose.name],
                _owner(purpose, plugin_name),
                owners[purpose.name],
                f"{_owner(purpose, plugin_name)}-{purpose.name}",
            )
    return _Catalog(tuple(purposes), by_name, owners, tuple(collisions))


def _catalog(datasette: Datasette) -> _Catalog:
    key = implementations("register_llm_purposes")
    state = state_of(datasette)
    cached = state.get(_CATALOG)
    if cached is not None and cached[0] == key:
        return cached[1]
    return state.put(_CATALOG, (key, _build(datasette)))[1]


def get_purposes(datasette: Datasette) -> list[Purpose]:
    """Return every registered purpose; when two plugins register a name, the first wins."""
    return list(_catalog(datasette).purposes)


def get_purpose(datasette: Datasette, name: str) -> Purpose | None:
    """Return the registered purpose called ``name``, or ``None``."""
    return _catalog(datasette).by_name.get(name)


def get_purpose_owner(datasette: Datasette, name: str) -> str | None:
    """Return who registered purpose ``name``: its ``owner``, else the plugin's name."""
    return _catalog(datasette).owners.get(name)


def get_purpose_collisions(datasette: Datasette) -> list[PurposeCollision]:
    """Return every purpose name registered by more than one owner."""
    return list(_catalog(datasette).collisions)
