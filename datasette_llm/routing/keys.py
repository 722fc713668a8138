"""API keys: where a model's key comes from, and reading it only when it is used.

Order: the ``key`` settings of the configuration's references to the model (a datasette-secrets
secret, ``{$env: VAR}`` or ``{$file: PATH}``), then the provider secret ``<NEEDS_KEY>_API_KEY``,
then llm's own key store (``llm keys set``, or the provider's environment variable).

``key_status`` only looks: it never reads a stored secret, so checking availability (for
``models()``, routing or the routing page) does not count as a use in datasette-secrets' audit
columns. ``key_value`` reads the key for a model about to be used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

import llm

from ..actors import Actor, actor_id
from ..config.values import KeySetting
from ..log import remember

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

__all__ = [
    "KeySource",
    "KeyStatus",
    "key_status",
    "key_value",
    "provider_secret_name",
    "secret_variable",
]

KeySource: TypeAlias = Literal["not_needed", "secret", "env", "file", "llm", "missing"]
"""Where a model's key comes from: none needed, a secret, ``$env``, ``$file``, llm, or nowhere."""


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """Where the key for a model comes from. The key itself is never part of it.

    Attributes:
        source: ``"not_needed"``, ``"secret"`` (datasette-secrets), ``"env"`` or ``"file"``
            (``{$env: ...}`` or ``{$file: ...}`` under ``key:``), ``"llm"`` (llm's key store or
            the provider's environment variable), or ``"missing"``.
        secret_name: For ``"secret"``, the secret holding the key; for ``"missing"``, the secret
            that should; for ``"env"`` and ``"file"``, the variable's name or the file's path.
    """

    source: KeySource
    secret_name: str | None = None

    @property
    def available(self) -> bool:
        """Whether the model can be called: it needs no key or one was found."""
        return self.source != "missing"

    def described(self) -> str:
        """Where the key comes from, in words (an error names it: never the key itself)."""
        name = self.secret_name
        return {
            "not_needed": "nowhere: the model needs none",
            "secret": f"the secret {name} (datasette-secrets, or {secret_variable(name or '')})",
            "env": f"the environment variable {name}",
            "file": f"the file {name}",
            "llm": "llm's own keys (llm keys set, or the provider's environment variable)",
            "missing": f"nowhere: set the secret {name}",
        }[self.source]


def provider_secret_name(needs_key: str) -> str:
    """Return the datasette-secrets name for a provider's key, e.g. ``OPENAI_API_KEY``."""
    return f"{needs_key.upper()}_API_KEY"


def secret_variable(name: str) -> str:
    """The environment variable that holds secret ``name`` in place of datasette-secrets' store:
    ``DATASETTE_SECRETS_<NAME>``, a character a variable name cannot hold (the ``-`` of a
    provider such as ``echo-needs-key``) written as ``_``."""
    return "DATASETTE_SECRETS_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _from_environment(name: str) -> str | None:
    # The name as written first (datasette-secrets' own variable), then one a shell can set.
    return os.environ.get(f"DATASETTE_SECRETS_{name}") or os.environ.get(secret_variable(name))


def _from_file(path: str) -> str | None:
    try:
        with open(path) as file:
            return _trimmed(file.read())
    except OSError:
        return None


def _store_is_configured(datasette: Datasette) -> bool:
    from datasette_secrets import get_config

    return get_config(datasette) is not None


async def _stored(datasette: Datasette, name: str) -> bool:
    """Whether datasette-secrets' encrypted store holds secret ``name`` (read, never recorded)."""
    if not _store_is_configured(datasette):
        return False
    from datasette.utils import sqlite3
    from datasette_secrets import get_database

    try:
        rows = await get_database(datasette).execute(
            "select 1 from datasette_secrets where name = ? limit 1", (name,)
        )
    except sqlite3.OperationalError:  # the table is created at startup
        return False
    return rows.first() is not None


def _llm_key(model: AsyncModel) -> str | None:
    needs_key = getattr(model, "needs_key", None)
    key: str | None = llm.get_key(key_alias=needs_key, env_var=getattr(model, "key_env_var", None))
    return _trimmed(key)


def _provider_secret(model: AsyncModel) -> str | None:
    needs_key = getattr(model, "needs_key", None)
    return provider_secret_name(needs_key) if needs_key else None


async def _look(
    datasette: Datasette, setting: KeySetting, actor: Actor | None, read: bool
) -> tuple[bool, str | None]:
    """Return whether ``setting`` holds a key and, if ``read``, the key."""
    if setting.source == "env":
        value = os.environ.get(setting.name) or None
    elif setting.source == "file":
        value = _from_file(setting.name)
    else:
        value = _from_environment(setting.name)
        if value is None and _store_is_configured(datasette):
            if not read:
                return await _stored(datasette, setting.name), None
            from datasette_secrets import get_secret

            # Records the use (last_used_at, last_used_by) in the store.
            value = await get_secret(datasette, setting.name, actor_id(actor)) or None
    value = _trimmed(value)
    return value is not None, value


def _trimmed(value: str | None) -> str | None:
    """A key without the whitespace around it (a newline pasted or saved with it), which no
    HTTP header can carry; ``None`` if nothing is left."""
    return (value or "").strip() or None


async def _find(
    datasette: Datasette,
    settings: Sequence[KeySetting],
    model: AsyncModel,
    actor: Actor | None,
    read: bool,
) -> tuple[str | None, KeyStatus]:
    provider = _provider_secret(model)
    if provider is None:
        return None, KeyStatus("not_needed")
    for setting in (*settings, KeySetting("secret", provider)):
        found, value = await _look(datasette, setting, actor, read)
        if found:
            return value, KeyStatus(setting.source, setting.name)
    value = _llm_key(model)
    if value is not None:
        return value, KeyStatus("llm")
    secrets = [setting.name for setting in settings if setting.source == "secret"]
    return None, KeyStatus("missing", secrets[0] if secrets else provider)


async def key_status(
    datasette: Datasette, settings: Sequence[KeySetting], model: AsyncModel
) -> KeyStatus:
    """Return where ``model``'s key would come from, given the configured ``settings``.

    Nothing is read from datasette-secrets' encrypted store: a stored secret is only checked for.
    """
    _, status = await _find(datasette, settings, model, None, read=False)
    return status


async def key_value(
    datasette: Datasette, settings: Sequence[KeySetting], model: AsyncModel, actor: Actor | None
) -> tuple[str | None, KeyStatus]:
    """Return ``(key, status)`` for ``model``, reading the key (a use of a stored secret).

    The value is remembered so that no log line of ours shows it (``datasette_llm.log``).
    """
    key, status = await _find(datasette, settings, model, actor, read=True)
    remember(key)
    return key, status
