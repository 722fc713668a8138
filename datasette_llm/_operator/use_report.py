"""Who may use each purpose (the ``llm-use`` action), as datasette.yaml configures it.

Read from Datasette's configuration, where an operator writes the rules: the global block
``permissions: {llm-use: ...}`` and a purpose's own ``databases: {<purpose>: {permissions:
{llm-use: ...}}}`` (Datasette applies that block to every resource whose parent is the name).
Rules that a permissions plugin adds through ``permission_resources_sql`` depend on the actor
and are not listed; the page says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..permissions import USE

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = ["MayUse", "UseRule", "who_may_use", "with_may_use"]


@dataclass(frozen=True, slots=True)
class UseRule:
    """One configured allow block for ``llm-use``.

    Attributes:
        path: Where it is written, e.g. ``permissions.llm-use``.
        allow: The allow block as written (``{"id": "root"}``, ``true``, ...).
    """

    path: str
    allow: object

    @property
    def text(self) -> str:
        """The block as compact JSON."""
        return json.dumps(self.allow, sort_keys=True, default=str)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {"path": self.path, "allow": self.allow}


@dataclass(frozen=True, slots=True)
class MayUse:
    """Who may use one purpose.

    Attributes:
        everyone: No rule is configured and Datasette allows ``llm-use`` by default.
        rules: The configured rules that apply, the purpose's own first, then the global one.
    """

    everyone: bool
    rules: tuple[UseRule, ...]

    @property
    def text(self) -> str:
        """One line for the page: "everyone", or each rule with where it is written."""
        if self.everyone:
            return "everyone"
        if not self.rules:
            return "nobody but root (--default-deny)"
        return "; ".join(f"{rule.path}: {rule.text}" for rule in self.rules)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "everyone": self.everyone,
            "rules": [rule.to_json() for rule in self.rules],
            "text": self.text,
        }


def _rule(block: object, path: str) -> UseRule | None:
    if isinstance(block, Mapping) and USE in block:
        return UseRule(f"{path}.{USE}", block[USE])
    return None


def who_may_use(datasette: Datasette, names: Iterable[str]) -> dict[str, MayUse]:
    """Return, for each purpose name, who the configuration lets use it."""
    config = datasette.config or {}
    databases = config.get("databases")
    databases = databases if isinstance(databases, Mapping) else {}
    global_rule = _rule(config.get("permissions"), "permissions")
    default_deny = bool(datasette.default_deny)
    report: dict[str, MayUse] = {}
    for name in names:
        database = databases.get(name)
        own = None
        if isinstance(database, Mapping):
            own = _rule(database.get("permissions"), f"databases.{name}.permissions")
        rules = tuple(rule for rule in (own, global_rule) if rule is not None)
        report[name] = MayUse(everyone=not rules and not default_deny, rules=rules)
    return report


def with_may_use(document: dict[str, object], may_use: Mapping[str, MayUse]) -> dict[str, object]:
    """Add ``may_use`` to each purpose of the ``/-/llm.json`` document; return the document."""
    purposes = document.get("purposes")
    for purpose in purposes if isinstance(purposes, list) else ():
        shown = may_use.get(str(purpose.get("name"))) if isinstance(purpose, dict) else None
        if shown is not None:
            purpose["may_use"] = shown.to_json()
    return document
