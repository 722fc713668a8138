"""Make sure Datasette sees all of datasette-llm's hook implementations, whatever the import order.

Importing ``datasette_llm`` imports ``datasette.plugins``, which loads every ``datasette`` entry
point, ours included, while our package is still half-imported: pluggy would then register a
module with none of its hooks defined yet. Once the package is complete we register it again.
"""

from __future__ import annotations

import sys

from datasette.plugins import pm

__all__ = ["register_fully"]


def register_fully(module_name: str) -> None:
    """Re-register ``module_name`` with Datasette's plugin manager if it was registered early."""
    module = sys.modules[module_name]
    if not pm.is_registered(module):
        return
    name = pm.get_name(module)
    pm.unregister(module)
    pm.register(module, name=name)
