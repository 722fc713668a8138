"""Make sure Datasette sees all of datasette-llm's hooks, whatever the import order.

``import datasette_llm`` does not import ``datasette.plugins``: that import loads every installed
Datasette plugin (about 100 ms). Two things still have to happen once it is imported:

- our hookspecs are added to Datasette's plugin manager (``when_imported``);
- if ``datasette.plugins`` was imported while our package was half-imported, Datasette registered
  a module with none of its hooks defined yet, so we register it again (``register_fully``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

__all__ = ["register_fully", "when_imported"]


class _RunAfterLoader:
    """Execute a module with its own loader, then run a callback.

    Loader and finder are duck-typed: importing ``importlib.abc`` would cost a few milliseconds.
    """

    def __init__(self, loader: Loader, callback: Callable[[], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # Put the real loader back, for anything that later asks the module for resources.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._callback()


class _AfterImportFinder:
    """Find module ``name`` once, through the other finders, so a callback runs after it loads.

    Python has no post-import hook; this is the usual stand-in. It removes itself on first use.
    """

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self._name = name
        self._callback = callback

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname != self._name:
            return None
        sys.meta_path.remove(self)
        spec = find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = cast("Loader", _RunAfterLoader(spec.loader, self._callback))
        return spec


def when_imported(module_name: str, attribute: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` now if ``module_name`` has ``attribute`` yet, else once it is imported."""
    if hasattr(sys.modules.get(module_name), attribute):
        callback()
    elif module_name not in sys.modules:
        sys.meta_path.insert(0, _AfterImportFinder(module_name, callback))


def register_fully(module_name: str) -> None:
    """Re-register ``module_name`` with Datasette's plugin manager if it was registered early."""
    pm = getattr(sys.modules.get("datasette.plugins"), "pm", None)
    if pm is None:
        return
    module = sys.modules[module_name]
    if not pm.is_registered(module):
        return
    name = pm.get_name(module)
    pm.unregister(module)
    pm.register(module, name=name)
