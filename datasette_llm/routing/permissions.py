"""Who may use a purpose, and who may change routing: datasette-llm's Datasette actions.

``llm-use`` is checked on a ``PurposeResource`` (the purpose's name as the resource's parent)
whenever ``LLM.model()``, ``models()``, ``group()`` or ``resolve()`` is given an actor. It is
allowed by default, the way Datasette's own ``view-instance`` is: ``default_allow`` adds a
global allow, which any rule the operator writes overrides (a deny at the same level wins over
an allow; a per-purpose rule wins over a global one)::

    permissions:
      llm-use:
        id: root            # only root may use any purpose
    plugins:
      datasette-llm:
        purposes:
          enrichments:
            allow:          # who may use this purpose, whatever the global rule says
              id: [root, alice]

``purpose_rules`` turns each purpose's ``allow:`` into a rule on that purpose, matched by
Datasette's own ``actor_matches_allow``: an allow for an actor it matches, a deny for any other.
The older form, a block under ``databases: <purpose>: permissions: llm-use:`` (Datasette reads
it as the rules of every resource whose parent is ``<purpose>``), still works, but is
deprecated: a purpose is not a database. A purpose with both allows only actors both match.

A call without a purpose is checked with no resource: only global rules apply to it.

``llm-manage-routing`` (global) is denied by default, like ``llm-view-routing``. The root actor
of ``datasette --root`` may always do all three: ``is_root`` is the one check of that.

Datasette answers ``allowed()`` with a query of its internal database, about 30 times the cost of
routing a call; so verdicts are kept per Datasette instance, per actor and purpose, for as long
as Datasette's configuration (its ``permissions`` block, and the datasette-llm configuration as
written, ``config.source.written_config_for``) is the same object, and at most
``VERDICT_SECONDS``, so that a grant stored by a permissions plugin in a table takes effect
soon after it changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

from datasette import Forbidden
from datasette.permissions import PermissionSQL, Resource
from datasette.utils import actor_matches_allow

from ..actors import Actor, actor_id
from ..config.source import written_config_for
from ..config.values import CONFIG_ROOT, PLUGIN_NAME, LLMConfig
from ..errors import ConfigurationError, is_text, lone_surrogate
from ..state import Slot, state_of

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = [
    "MANAGE_ROUTING",
    "UseRule",
    "Verdict",
    "explain",
    "use_rules",
    "who_may",
    "USE",
    "VERDICT_LIMIT",
    "VERDICT_SECONDS",
    "PurposeNotAllowedError",
    "PurposeResource",
    "can_manage_routing",
    "check_use",
    "is_root",
    "may_use",
    "default_allow",
    "purpose_rules",
]

USE: Final = "llm-use"
"""The action an actor needs to get a model for a purpose; allowed by default."""

MANAGE_ROUTING: Final = "llm-manage-routing"
"""The action that guards changing the routing (and testing a route); denied by default."""

VERDICT_SECONDS: Final = 5.0
"""How long a verdict of ``llm-use`` is reused while the configuration stays the same."""

VERDICT_LIMIT: Final = 4096
"""How many verdicts one Datasette instance keeps before it starts afresh."""


class PurposeResource(Resource):
    """A purpose, as Datasette's permission system sees it: ``parent`` is the purpose's name."""

    name = "llm-purpose"
    parent_class = None

    def __init__(self, purpose: str) -> None:
        super().__init__(parent=purpose, child=None)

    @classmethod
    async def resources_sql(cls, datasette: Datasette, actor: object = None) -> str:
        """Return SQL listing every registered and configured purpose (``parent``, ``child``)."""
        from ..errors import ConfigurationError
        from .catalog import get_purposes
        from .overlay import config_for

        names = [purpose.name for purpose in get_purposes(datasette)]
        try:
            names.extend(config_for(datasette).purposes)
        except ConfigurationError:
            pass
        rows = [
            "SELECT '{}' AS parent, NULL AS child".format(name.replace("'", "''"))
            for name in dict.fromkeys(names)
        ]
        return " UNION ALL ".join(rows) or "SELECT NULL AS parent, NULL AS child WHERE 0"


def _grant(purpose: str | None, who: str) -> str:
    """Return the datasette.yaml block granting ``llm-use`` to ``who``: on ``purpose``, or all."""
    if purpose is None:
        return f"permissions: {{{USE}: {{id: {who}}}}}"
    return f"plugins: {{{PLUGIN_NAME}: {{purposes: {{{purpose}: {{allow: {{id: {who}}}}}}}}}}}"


@dataclass(frozen=True, slots=True)
class UseRule:
    """One allow block for ``llm-use`` in the configuration.

    Attributes:
        path: Where it is written, e.g. ``plugins.datasette-llm.purposes.extract.allow``.
        allow: The allow block, as Datasette's ``actor_matches_allow`` reads it.
        purpose: The purpose it is a rule of, or ``None`` for a rule of every purpose.
    """

    path: str
    allow: object
    purpose: str | None = None

    @property
    def text(self) -> str:
        """The block as compact JSON."""
        return json.dumps(self.allow, sort_keys=True, default=str)

    def matches(self, actor: Actor | None) -> bool:
        """Whether the block lets ``actor`` through."""
        return bool(actor_matches_allow(actor, self.allow))

    def who(self) -> str:
        """Who the block lets through, in words: "everyone", "the actors alice and bob"."""
        return _who(self.allow)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {"path": self.path, "allow": self.allow, "who": self.who()}


def _listed(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def _who(allow: object) -> str:
    if allow is True:
        return "everyone"
    if allow is False or allow is None:
        return "nobody but root"
    if not isinstance(allow, Mapping) or not allow:
        return "nobody but root"
    parts = []
    for key, value in allow.items():
        values = [str(item) for item in (value if isinstance(value, list | tuple) else [value])]
        if "*" in values:
            parts.append("any signed-in actor" if key == "id" else f"any actor with a {key}")
        elif key == "id":
            parts.append(f"the actor{'s' if len(values) > 1 else ''} {_listed(values)}")
        else:
            parts.append(f"actors whose {key} is {_listed(values)}")
    return " or ".join(parts)


def use_rules(datasette: Datasette, purpose: str | None) -> tuple[UseRule, ...]:
    """The configured rules for ``llm-use`` that apply to ``purpose``: its own first (its
    ``allow:``, then the deprecated ``databases: <purpose>:`` block), then the global one
    (``permissions:``). A purpose's own rules decide for it: the global one only when it has
    none."""
    config = datasette.config or {}
    rules: list[UseRule] = []
    if purpose is not None:
        written = _written(datasette)
        own = None if written is None else written.purposes.get(purpose)
        if own is not None and own.allow is not None:
            path = f"{CONFIG_ROOT}.purposes.{purpose}.allow"
            rules.append(UseRule(path, own.allow_block(), purpose))
        databases = config.get("databases")
        database = databases.get(purpose) if isinstance(databases, Mapping) else None
        block = database.get("permissions") if isinstance(database, Mapping) else None
        if isinstance(block, Mapping) and USE in block:
            rules.append(UseRule(f"databases.{purpose}.permissions.{USE}", block[USE], purpose))
    block = config.get("permissions")
    if isinstance(block, Mapping) and USE in block:
        rules.append(UseRule(f"permissions.{USE}", block[USE]))
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an actor may use a purpose, and what decided it.

    Attributes:
        allowed: Whether it may.
        reason: What decided, in words: the rule (with where it is written), root, the default.
        rule: The configured rule that decided, if one did.
    """

    allowed: bool
    reason: str
    rule: UseRule | None = None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        rule = None if self.rule is None else self.rule.to_json()
        return {"allowed": self.allowed, "reason": self.reason, "rule": rule}


def explain(datasette: Datasette, actor: Actor | None, purpose: str | None) -> Verdict:
    """What the configuration decides for ``actor`` and ``purpose``, and which rule decides:
    root under ``--root``; else the purpose's own rules (every one must let the actor
    through: at one level a deny wins); else the global rule; else the default (allowed, but
    not under ``--default-deny``). ``check_use`` asks Datasette, which other plugins may add
    rules to; this says which of datasette-llm's configured rules applies."""
    if is_root(datasette, actor):
        return Verdict(True, "root under datasette --root may use every purpose")
    rules = use_rules(datasette, purpose)
    own = [rule for rule in rules if rule.purpose is not None]
    for rule in own or [rule for rule in rules if rule.purpose is None]:
        if not rule.matches(actor):
            return Verdict(False, f"{rule.path} lets through only {rule.who()}", rule)
    if own:
        return Verdict(True, f"{own[0].path} lets it through ({own[0].who()})", own[0])
    if rules:
        return Verdict(True, f"{rules[0].path} lets it through ({rules[0].who()})", rules[0])
    if datasette.default_deny:
        return Verdict(False, f"no rule allows {USE} and Datasette runs with --default-deny")
    return Verdict(True, f"{USE} is allowed by default and no rule restricts it")


def who_may(datasette: Datasette, purpose: str | None) -> str:
    """Who may use ``purpose``, in words, from the configured rules: "everyone", "only the
    actors alice and bob", "nobody but root"."""
    rules = use_rules(datasette, purpose)
    own = [rule for rule in rules if rule.purpose is not None]
    deciding = own or [rule for rule in rules if rule.purpose is None]
    if not deciding:
        return "nobody but root (--default-deny)" if datasette.default_deny else "everyone"
    words = [rule.who() for rule in deciding]
    if "nobody but root" in words:
        return "nobody but root"
    if words == ["everyone"] * len(words):
        return "everyone"
    text = " who are also ".join(word for word in words if word != "everyone")
    return text if text.startswith("any ") else f"only {text}"


class PurposeNotAllowedError(Forbidden):
    """Raised when the actor of a call may not use its purpose (the ``llm-use`` action).

    It is Datasette's ``Forbidden``: left uncaught in a view, the visitor gets a 403 page.

    Attributes:
        purpose: The purpose refused, or ``None`` for a call without one.
        actor_id: The actor's ``id``, or ``None`` for an actor without one.
    """

    def __init__(
        self, purpose: str | None, actor_id: str | None, verdict: Verdict | None = None
    ) -> None:
        self.purpose = purpose
        self.actor_id = actor_id
        self.verdict = verdict
        who = "An actor without an id" if actor_id is None else f"Actor {actor_id!r}"
        what = "a call without a purpose" if purpose is None else f"the purpose {purpose!r}"
        grantee = "<id>" if actor_id is None else json.dumps(actor_id)
        rule = None if verdict is None else verdict.rule
        if verdict is None or verdict.allowed:
            # Datasette refused on a rule datasette-llm's configuration does not hold (another
            # plugin's): name the ways to grant it.
            why = f"the {USE!r} action is not allowed for it"
            fix = f"grant it in datasette.yaml with {_grant(purpose, grantee)}"
            if purpose is not None:
                fix += f" (that purpose only) or {_grant(None, grantee)} (every purpose)"
            fix += ", adding the id to any allow block already there"
        elif rule is not None:
            why = verdict.reason
            fix = f"add {grantee} to the block at {rule.path}"
            if rule.purpose is None and purpose is not None:
                fix += (
                    f" (every purpose), or give the purpose a rule of its own with "
                    f"{_grant(purpose, grantee)} (that purpose only)"
                )
        else:
            why = verdict.reason
            fix = f"grant it in datasette.yaml with {_grant(purpose, grantee)}"
        super().__init__(f"{who} may not use {what}: {why}. To allow it, {fix}.")


_Table: TypeAlias = dict[tuple[object, str | None], tuple[bool, float]]
"""Verdicts by (actor, purpose): allowed, and until when (``time.monotonic()``)."""


@dataclass(slots=True)
class _Verdicts:
    """The ``llm-use`` verdicts of one Datasette instance, for one configuration."""

    config: object
    permissions: object
    written: LLMConfig | None
    default_deny: bool
    verdicts: _Table = field(default_factory=dict)


_VERDICTS: Final[Slot[_Verdicts]] = Slot("the llm-use verdicts")


def _written(datasette: Datasette) -> LLMConfig | None:
    """Return the datasette-llm configuration as written, or ``None`` if it is malformed."""
    try:
        return written_config_for(datasette)
    except ConfigurationError:  # startup and the routing page report it
        return None


def _verdicts_of(datasette: Datasette) -> _Table:
    """Return the instance's verdicts, started afresh when its configuration changed."""
    config = datasette.config
    permissions = None if config is None else config.get("permissions")
    written = _written(datasette)
    state = state_of(datasette)
    cached = state.get(_VERDICTS)
    if (
        cached is None
        or cached.config is not config
        or cached.permissions is not permissions
        or cached.written is not written
        or cached.default_deny != datasette.default_deny
        or len(cached.verdicts) >= VERDICT_LIMIT
    ):
        cached = state.put(
            _VERDICTS, _Verdicts(config, permissions, written, datasette.default_deny)
        )
    return cached.verdicts


def is_root(datasette: Datasette, actor: Actor | None) -> bool:
    """Return whether ``actor`` is the root actor of ``datasette --root``.

    It may do everything datasette-llm guards (``llm-use``, ``llm-manage-routing``,
    ``llm-view-routing``), even where a ``permissions:`` block grants an action only to others:
    each check lets it through here before asking Datasette.
    """
    return actor is not None and bool(datasette.root_enabled) and actor.get("id") == "root"


async def check_use(datasette: Datasette, actor: Actor | None, purpose: str | None) -> None:
    """Raise ``PurposeNotAllowedError`` unless ``actor`` may use ``purpose``; no actor: no check.

    ``purpose`` ``None`` is a call without a purpose. The root actor of ``datasette --root``
    always may; otherwise Datasette decides, and its verdict is reused as the module says.

    Raises:
        PurposeNotAllowedError: Datasette does not allow ``llm-use`` for this actor and purpose.
    """
    if actor is None or is_root(datasette, actor):
        return
    if purpose is not None and not is_text(purpose):
        raise ValueError(lone_surrogate("purpose name", purpose))
    verdicts = _verdicts_of(datasette)
    key: tuple[object, str | None]
    try:
        key = (tuple(actor.items()), purpose)
        verdict = verdicts.get(key)
    except TypeError:  # a value is unhashable (a list of roles): key on the JSON instead
        key = (json.dumps(actor, sort_keys=True, default=repr), purpose)
        verdict = verdicts.get(key)
    now = time.monotonic()
    if verdict is None or now >= verdict[1]:
        if USE not in datasette.actions:
            await datasette.invoke_startup()  # as Datasette does on its first request
        resource = None if purpose is None else PurposeResource(purpose)
        allowed = await datasette.allowed(action=USE, resource=resource, actor=actor)
        verdict = verdicts[key] = (allowed, now + VERDICT_SECONDS)
    if not verdict[0]:
        raise PurposeNotAllowedError(purpose, actor_id(actor), explain(datasette, actor, purpose))


async def may_use(datasette: Datasette, actor: Actor | None, purpose: str | None) -> bool:
    """Return whether ``actor`` may use ``purpose``, as ``check_use`` decides."""
    try:
        await check_use(datasette, actor, purpose)
    except PurposeNotAllowedError:
        return False
    return True


async def can_manage_routing(datasette: Datasette, actor: Actor | None) -> bool:
    """Return whether ``actor`` may change the routing: root under ``--root``, or a grant.

    Not cached: it guards writes, which are rare.
    """
    if is_root(datasette, actor):
        return True
    return await datasette.allowed(action=MANAGE_ROUTING, actor=actor)


def default_allow(datasette: Datasette, action: str) -> PermissionSQL | None:
    """Allow ``llm-use`` by default (not under ``--default-deny``), as Datasette's view actions.

    The allow is global: any ``permissions:`` rule for ``llm-use`` overrides it, and so does a
    purpose's ``allow:`` (``purpose_rules``) for that purpose.
    """
    if action == USE and not datasette.default_deny:
        return PermissionSQL.allow(reason=f"default allow for {USE}")
    return None


def purpose_rules(datasette: Datasette, actor: Actor | None, action: str) -> PermissionSQL | None:
    """Turn each purpose's ``allow:`` into a rule for ``llm-use`` on that purpose.

    The rule is at the purpose's level (``parent`` the purpose, ``child`` NULL), as a
    ``databases: <purpose>: permissions: llm-use:`` block is: an allow when Datasette's
    ``actor_matches_allow`` matches the actor (and for root under ``--root``, as ``is_root``
    says), a deny otherwise, so it overrides the global default and any global rule. A
    malformed configuration gives no rules: startup reports it.
    """
    if action != USE:
        return None
    written = _written(datasette)
    if written is None:
        return None
    root = is_root(datasette, actor)
    selects: list[str] = []
    params: dict[str, object] = {}
    for index, (name, purpose) in enumerate(written.purposes.items()):
        if purpose.allow is None:
            continue
        allowed = root or actor_matches_allow(actor, purpose.allow_block())
        key = f"datasette_llm_allow_{index}"
        selects.append(
            f"SELECT :{key}_parent AS parent, NULL AS child, :{key}_allow AS allow, "
            f":{key}_reason AS reason"
        )
        params[f"{key}_parent"] = name
        params[f"{key}_allow"] = 1 if allowed else 0
        params[f"{key}_reason"] = (
            f"{CONFIG_ROOT}.purposes.{name}.allow {'allows' if allowed else 'denies'} {USE}"
        )
    if not selects:
        return None
    return PermissionSQL(sql="\nUNION ALL\n".join(selects), params=params)
