"""Reading single values of the ``datasette-llm`` configuration, each checked where it stands.

``Reader`` collects every problem with its configuration path instead of stopping at the first;
``datasette_llm.config_parser`` builds the whole configuration with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .config import EMPTY_OPTIONS, KeySetting
from .errors import (
    ConfigProblem,
    Substituted,
    is_text,
    lone_surrogate,
    nearest,
    quoted,
    shown,
)
from .provider_errors import ERROR_KINDS, ErrorKind

__all__ = ["FAILED", "FALLBACK_KINDS", "Reader", "got", "reference"]

FALLBACK_KINDS: Final = tuple(kind for kind in ERROR_KINDS if kind != "unknown")
FAILED: Final = object()  # what value() returns when a $env or $file reference fails
# A datasette-secrets secret is also read from the environment variable DATASETTE_SECRETS_<NAME>,
# so its name is an environment variable name. Anything else under key: is a pasted key.
_SECRET_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _looks_like_a_key(name: str) -> bool:
    """A long name mixing lower case and digits (``gsk_3fX...``) is a key, not a secret's name."""
    return len(name) >= 24 and any(c.islower() for c in name) and any(c.isdigit() for c in name)


def got(value: object) -> str:
    """What a message says was found instead: the type, then the value (never a substituted one)."""
    type_name = "str" if isinstance(value, str) else type(value).__name__
    return f"{type_name}: {quoted(value)}"


def reference(value: object) -> tuple[str, str] | None:
    """Return ``("env", NAME)`` or ``("file", PATH)`` for Datasette's ``{$env: ...}`` syntax."""
    if isinstance(value, Mapping) and len(value) == 1:
        ((marker, target),) = value.items()
        if marker in ("$env", "$file") and isinstance(target, str):
            return marker[1:], target
    return None


class Reader:
    """Reads configuration values, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.env_names: list[str] = []
        self.file_paths: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path=path, message=message))

    def value(self, value: object, path: str) -> object:
        """Return ``value``, a ``{$env: NAME}`` or ``{$file: PATH}`` resolved as Datasette would."""
        found = reference(value)
        if found is None:
            return value
        kind, target = found
        if kind == "env":
            self.env_names.append(target)
            if target not in os.environ:
                self.fail(path, f"the environment variable {target} named by $env is not set.")
                return FAILED
            return Substituted(os.environ[target], "env", target)
        self.file_paths.append(target)
        try:
            with open(target) as file:
                return Substituted(file.read().strip(), "file", target)
        except OSError as error:
            self.fail(path, f"cannot read the file {target!r} named by $file: {error.strerror}.")
            return FAILED

    def mapping(
        self, value: object, path: str, expected: str, valid_keys: tuple[str, ...]
    ) -> Mapping[object, object] | None:
        """Return ``value`` if it is a mapping, reporting any key not in ``valid_keys``."""
        if not isinstance(value, Mapping):
            self.fail(path, f"expected {expected}, got {got(value)}.")
            return None
        for key in value:
            if key not in valid_keys:
                suggestion = nearest(str(key), valid_keys) if isinstance(key, str) else None
                hint = f" Did you mean {suggestion!r}?" if suggestion else ""
                self.fail(
                    f"{path}.{shown(key)}",
                    f"unknown key {key!r}.{hint} Valid keys here: {', '.join(valid_keys)}.",
                )
        return value

    def model_id(self, value: object, path: str) -> str | None:
        value = self.value(value, path)
        if value is FAILED:
            return None
        if not isinstance(value, str):
            self.fail(path, f"expected a model id string, got {got(value)}.")
            return None
        if not value.strip():
            self.fail(path, "model id is empty: give a model id such as 'gpt-5.4-mini'.")
            return None
        if not is_text(value):
            self.fail(path, lone_surrogate("model id", value))
            return None
        return value

    def key(self, value: object, path: str) -> KeySetting | None:
        """Parse ``key:``; a value that is not a secret name is refused without being quoted."""
        found = reference(value)
        if found is not None:
            kind, target = found
            return KeySetting("env" if kind == "env" else "file", target)
        if not isinstance(value, str) or not value.strip():
            self.fail(
                path,
                "expected the name of a datasette-secrets secret (such as OPENAI_API_KEY), "
                f"{{$env: VARIABLE}} or {{$file: PATH}}, got {type(value).__name__}.",
            )
            return None
        if not is_text(value):
            self.fail(path, lone_surrogate("the secret name", None))
            return None
        if not _SECRET_NAME.match(value) or _looks_like_a_key(value):
            self.fail(
                path,
                "this is not a secret name (letters, digits and underscores, such as "
                "ENRICHMENTS_OPENAI_KEY): it looks like an API key pasted in, so it is not "
                "shown. Store the key with datasette-secrets and name the secret here, or use "
                "{$env: VARIABLE}.",
            )
            return None
        return KeySetting("secret", value)

    def options(self, value: object, path: str) -> Mapping[str, object]:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping of model options, got {got(value)}.")
            return EMPTY_OPTIONS
        options: dict[str, object] = {}
        for name, option in value.items():
            if not isinstance(name, str):
                self.fail(path, f"option names must be strings, got {name!r}.")
            elif not is_text(name):
                self.fail(path, lone_surrogate("option name", name))
            else:
                option = self.value(option, f"{path}.{name}")
                if option is FAILED:
                    continue
                if isinstance(option, str) and not is_text(option):
                    self.fail(f"{path}.{name}", lone_surrogate("value", option))
                options[name] = option
        return MappingProxyType(options) if options else EMPTY_OPTIONS

    def number(self, value: object, path: str, what: str) -> float | None:
        """A positive number of seconds (or of ``what``), or ``None`` when not set."""
        value = self.value(value, path)
        if value is None or value is FAILED:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.fail(path, f"expected a positive number of {what}, got {got(value)}.")
            return None
        if value == float("inf"):
            self.fail(path, f"expected a finite number of {what}: leave it out for no limit.")
            return None
        return float(value)

    def count(self, value: object, path: str, minimum: int) -> int | None:
        """A whole number of at least ``minimum``, or ``None`` when not set."""
        value = self.value(value, path)
        if value is None or value is FAILED:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"expected a whole number of at least {minimum}, got {got(value)}.")
            return None
        return value

    def kinds(self, value: object, path: str) -> tuple[ErrorKind, ...] | None:
        value = self.value(value, path)
        if value is None or value is FAILED:
            return None
        if not isinstance(value, list | tuple):
            self.fail(
                path,
                f"expected a list of error kinds ({', '.join(FALLBACK_KINDS)}), got {got(value)}.",
            )
            return None
        kinds: set[ErrorKind] = set()
        for index, item in enumerate(value):
            kind = next((k for k in FALLBACK_KINDS if k == item), None)
            if kind is not None:
                kinds.add(kind)
                continue
            if item == "unknown":
                self.fail(
                    f"{path}[{index}]",
                    "'unknown' errors never fall back or retry: an error datasette-llm does "
                    "not recognise may be a bug in the calling code, and is raised as it is. "
                    "Remove it.",
                )
                continue
            suggestion = nearest(item, FALLBACK_KINDS) if isinstance(item, str) else None
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            self.fail(
                f"{path}[{index}]",
                f"unknown error kind {quoted(item)}.{hint} "
                f"Error kinds: {', '.join(FALLBACK_KINDS)}.",
            )
        return tuple(kind for kind in FALLBACK_KINDS if kind in kinds)

    def boolean(self, value: object, path: str, default: bool) -> bool:
        value = self.value(value, path)
        if value is FAILED:
            return default
        if isinstance(value, bool):
            return value
        self.fail(path, f"expected true or false, got {got(value)}.")
        return default
