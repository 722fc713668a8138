"""Purposes: what a plugin uses models for, declared as typed constants."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..errors import is_text, lone_surrogate
from .requirements import NOTHING_REQUIRED, Requirements

__all__ = ["Purpose", "PurposeCollision", "purpose_name"]


_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MAX_NAME_LENGTH: Final = 100


@dataclass(frozen=True, slots=True)
class Purpose:
    """Describe one thing a plugin uses models for, so an operator can route it.

    Declare it once as a constant and register it with the ``register_llm_purposes`` hook::

        ENRICHMENTS: Final = Purpose(
            name="enrichments",
            owner="datasette-enrichments-llm",
            description="Run a prompt against every row of a table",
            default_model="gpt-5.4-nano",
        )

    Attributes:
        name: The key used under ``purposes:`` in configuration, e.g. ``"enrichments"``.
        description: What the purpose is for, shown to operators.
        owner: The plugin distribution that declares it (its namespace).
        default_model: The model the owner recommends when the operator configured none.
        requires: What every call of the purpose needs of a model (tools, schema, attachment
            types, streaming): routing, ``models()`` and fallbacks skip a model that lacks it.
    """

    name: str
    description: str | None = None
    owner: str | None = None
    default_model: str | None = None
    requires: Requirements = NOTHING_REQUIRED

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.requires, Requirements):
            raise TypeError(
                f"Purpose({self.name!r}).requires must be a datasette_llm.Requirements, "
                f"got {type(self.requires).__name__}: {self.requires!r}"
            )
        for field_name in ("description", "owner", "default_model"):
            value = getattr(self, field_name)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"Purpose({self.name!r}).{field_name} must be a string or None, "
                    f"got {type(value).__name__}: {value!r}"
                )
            if value is not None and not is_text(value):
                raise ValueError(lone_surrogate(f"Purpose({self.name!r}).{field_name}", value))
        if self.default_model is not None and not self.default_model.strip():
            raise ValueError(
                f"Purpose({self.name!r}).default_model is empty: "
                "give a model id such as 'gpt-5.4-nano', or leave it as None."
            )
        if self.owner is not None and not self.owner.strip():
            raise ValueError(
                f"Purpose({self.name!r}).owner is empty: give your plugin's distribution name "
                "(e.g. 'datasette-enrichments-llm'), or leave it as None."
            )


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"Purpose name must be a string, got {type(name).__name__}: {name!r}")
    if not name:
        raise ValueError("Purpose name is empty: give a short identifier such as 'enrichments'.")
    if name != name.strip() or any(ch.isspace() for ch in name):
        suggestion = "-".join(name.split())
        raise ValueError(
            f"Purpose name {name!r} contains whitespace, which cannot be used as a "
            f"configuration key: use {suggestion!r} instead."
        )
    if len(name) > _MAX_NAME_LENGTH:
        raise ValueError(
            f"Purpose name {name[:20]!r}... is {len(name)} characters long: "
            f"use at most {_MAX_NAME_LENGTH}."
        )
    if not _NAME_PATTERN.match(name):
        cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", name).strip("-_.") or "my-purpose"
        raise ValueError(
            f"Purpose name {name!r} cannot be used as a key under 'purposes:' in "
            "datasette.yaml: use letters, digits, '-', '_' and '.', starting with a letter "
            f"or digit, e.g. {cleaned!r}."
        )


def purpose_name(purpose: str | Purpose | None) -> str | None:
    """Return the name of a purpose given as a string, a ``Purpose`` or ``None``."""
    if purpose is None or isinstance(purpose, str):
        return purpose
    if isinstance(purpose, Purpose):
        return purpose.name
    raise TypeError(
        f"purpose= must be a string, a datasette_llm.Purpose or None, "
        f"got {type(purpose).__name__}: {purpose!r}"
    )


@dataclass(frozen=True, slots=True)
class PurposeCollision:
    """Two owners registered the same purpose name; the first registration was kept.

    Attributes:
        name: The purpose name both registered.
        kept: The purpose that is in use (registered first).
        ignored: The later registration that was ignored.
        kept_owner: Who registered ``kept``: its ``owner``, else the plugin's name.
        ignored_owner: Who registered ``ignored``: its ``owner``, else the plugin's name.
    """

    name: str
    kept: Purpose
    ignored: Purpose
    kept_owner: str
    ignored_owner: str
