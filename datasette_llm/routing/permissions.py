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


class PurposeNotAllowedError(Forbidden):
    """Raised when the actor of a call may not use its purpose (the ``llm-use`` action).

    It is Datasette's ``Forbidden``: left uncaught in a view, the visitor gets a 403 page.

    Attributes:
        purpose: The purpose refused, or ``None`` for a call without one.
        actor_id: The actor's ``id``, or ``None`` for an actor without one.
    """

    def __init__(self, purpose: str | None, actor_id: str | None) -> None:
        self.purpose = purpose
        self.actor_id = actor_id
        who = "An actor without an id" if actor_id is None else f"Actor {actor_id!r}"
        what = "a call without a purpose" if purpose is None else f"the purpose {purpose!r}"
        grantee = "<id>" if actor_id is None else json.dumps(actor_id)
        fix = f"grant it in datasette.yaml with {_grant(purpose, grantee)}"
        if purpose is not None:
            fix += f" (that purpose only) or {_grant(None, grantee)} (every purpose)"
        super().__init__(
            f"{who} may not use {what}: the {USE!r} action is not allowed for it. To allow it, "
            f"{fix}, adding the id to any allow block already there."
        )


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
        raise PurposeNotAllowedError(purpose, actor_id(actor))


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
