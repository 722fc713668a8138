"""Typed names for plugins built on datasette-llm: ``hookimpl`` and the ``Datasette`` class.

Datasette ships no type information, so under ``mypy --strict`` its own ``hookimpl`` is an
untyped decorator. Import these instead::

    from datasette_llm.typing import Datasette, hookimpl
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pluggy import HookimplMarker

if TYPE_CHECKING:
    from datasette.app import Datasette as Datasette

__all__ = ["Datasette", "hookimpl"]

hookimpl: Final[HookimplMarker] = HookimplMarker("datasette")
"""Datasette's hook implementation marker, typed (the same marker as ``datasette.hookimpl``)."""


def __getattr__(name: str) -> object:
    # Importing datasette.app is not free: only do it when Datasette is asked for at run time.
    if name == "Datasette":
        from datasette.app import Datasette

        return Datasette
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
