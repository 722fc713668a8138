"""Each purpose's chain for the routing report: the routed model, then every fallback in order.

For each fallback the report says whether the policy would admit it (``policy.screen``, its key
required, as ``routing.admit`` asks just before a prompt tries it) and, if not, why; and the
settings that apply (``retries``, ``timeout``, ``deadline``, ``fallback_on``), each with the
configuration path that sets it. Keys are only looked for (``key_status``), never read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from ..attempts import client_retries, tries_of
from ..capabilities import NOTHING_REQUIRED, Requirements
from ..config import CONFIG_ROOT, Resilience
from ..errors import shown
from ..keys import KeyStatus, key_status
from ..models import find_model
from ..policy import screen

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncModel

    from ..config import ModelRef
    from ..policy import Policy

__all__ = [
    "Chain",
    "ChainLink",
    "Refusal",
    "Setting",
    "SettingValue",
    "build_chain",
    "key_json",
]

Refusal: TypeAlias = Literal[
    "blocked",
    "not_allowed",
    "lacks_requirement",
    "keyless",
    "filtered",
    "not_installed",
    "routed_model",
    "repeated",
    "unchecked",
]
"""Why a fallback would not be tried (see ``ChainLink.refused_as``)."""

SettingValue: TypeAlias = "int | float | tuple[str, ...] | None"
_DEFAULTS: Final = Resilience()
_ROUTED_MODEL: Final = (
    "it is the routed model: a failing model is retried (retries), not tried again as its "
    "own fallback"
)


def key_json(key: KeyStatus | None) -> dict[str, object] | None:
    """Return a key status as JSON: where the key comes from, never the key."""
    if key is None:
        return None
    return {"source": key.source, "secret_name": key.secret_name, "available": key.available}


@dataclass(frozen=True, slots=True)
class Setting:
    """One resilience setting as it applies to a purpose.

    Attributes:
        value: The value in effect.
        set_at: The configuration path that sets it, or ``None`` for the built-in default.
    """

    value: SettingValue
    set_at: str | None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"value": value, "set_at": self.set_at}


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One model of a purpose's chain: the routed model, or a fallback.

    Attributes:
        model_id: The id as routed, or the fallback's id as written.
        role: ``"routed"`` or ``"fallback"``.
        path: Where the fallback is written; ``None`` for the routed model.
        refusal: Why the policy would not admit it, or ``None`` when it would be tried.
        refused_as: The kind of ``refusal``, for tooling.
        key: Its key status, or ``None`` when it is not installed or not checked.
        rpm: Its requests-per-minute limit, if configured.
        concurrency: Its concurrent-requests limit, if configured.
        client_retries: How many times the provider's client library retries by itself.
        tries: How many times datasette-llm itself tries it (each try is up to
            ``1 + client_retries`` requests).
    """

    model_id: str
    role: Literal["routed", "fallback"]
    path: str | None
    refusal: str | None
    refused_as: Refusal | None
    key: KeyStatus | None
    rpm: float | None
    concurrency: int | None
    client_retries: int
    tries: int

    @property
    def admitted(self) -> bool:
        """Whether a prompt would try it."""
        return self.refusal is None

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model_id": self.model_id,
            "role": self.role,
            "path": self.path,
            "admitted": self.admitted,
            "refusal": self.refusal,
            "refused_as": self.refused_as,
            "key": key_json(self.key),
            "rpm": self.rpm,
            "concurrency": self.concurrency,
            "client_retries": self.client_retries,
            "tries": self.tries,
        }


@dataclass(frozen=True, slots=True)
class Chain:
    """What a prompt for one purpose tries, in order, and the settings that apply.

    Attributes:
        links: The routed model (when routing found one), then each fallback as written.
        retries: ``retries``: how many more times one model is tried.
        timeout: ``timeout``: seconds per attempt.
        deadline: ``deadline``: seconds for the whole prompt.
        fallback_on: ``fallback_on``: the error kinds that move on to the next fallback.
    """

    links: tuple[ChainLink, ...]
    retries: Setting
    timeout: Setting
    deadline: Setting
    fallback_on: Setting

    @property
    def fallbacks(self) -> tuple[ChainLink, ...]:
        """The fallback links, in order."""
        return tuple(link for link in self.links if link.role == "fallback")

    @property
    def worth_showing(self) -> bool:
        """Whether anything here differs from a bare route: fallbacks, settings or limits."""
        settings = (self.retries, self.timeout, self.deadline, self.fallback_on)
        limited = any(link.rpm is not None or link.concurrency is not None for link in self.links)
        return bool(self.fallbacks) or limited or any(s.set_at for s in settings)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "models": [link.to_json() for link in self.links],
            "retries": self.retries.to_json(),
            "timeout": self.timeout.to_json(),
            "deadline": self.deadline.to_json(),
            "fallback_on": self.fallback_on.to_json(),
        }


def _settings(policy: Policy) -> tuple[Setting, Setting, Setting, Setting]:
    """The purpose's value of each setting, else the global one, with where it is set."""
    config = policy.config
    purpose_config = config.purpose(policy.purpose)
    applied = config.resilience_for(policy.purpose)
    found: list[Setting] = []
    for name in ("retries", "timeout", "deadline", "fallback_on"):
        value: SettingValue = getattr(applied, name)
        if purpose_config is not None and getattr(purpose_config, name) is not None:
            set_at: str | None = f"{CONFIG_ROOT}.purposes.{policy.purpose}.{name}"
        elif getattr(config.resilience, name) != getattr(_DEFAULTS, name):
            set_at = f"{CONFIG_ROOT}.{name}"
        else:
            set_at = None
        found.append(Setting(value, set_at))
    retries, timeout, deadline, fallback_on = found
    return retries, timeout, deadline, fallback_on


def _written(policy: Policy) -> list[tuple[str, ModelRef]]:
    """The fallbacks that apply to the purpose, as written, each with its path."""
    purpose_config = policy.config.purpose(policy.purpose)
    if purpose_config is not None and purpose_config.fallbacks is not None:
        base = f"{CONFIG_ROOT}.purposes.{policy.purpose}.fallbacks"
        refs = purpose_config.fallbacks
    else:
        base, refs = f"{CONFIG_ROOT}.fallbacks", policy.config.resilience.fallbacks
    return [(f"{base}[{index}]", ref) for index, ref in enumerate(refs)]


def _link(
    policy: Policy,
    retries: int,
    model_id: str,
    path: str | None,
    refusal: tuple[str, Refusal] | None,
    key: KeyStatus | None,
) -> ChainLink:
    """Build one link, its limits and the provider client's own retries read for it."""
    model = find_model(model_id, policy.registry)
    reference = policy.reference(model_id)
    by_client = client_retries(model) if model is not None else 0
    return ChainLink(
        model_id=model_id,
        role="routed" if path is None else "fallback",
        path=path,
        refusal=None if refusal is None else refusal[0],
        refused_as=None if refusal is None else refusal[1],
        key=key,
        rpm=reference.rpm,
        concurrency=reference.concurrency,
        client_retries=by_client,
        tries=tries_of(model, retries) if model is not None else 1 + retries,
    )


def _retries(setting: Setting) -> int:
    return setting.value if isinstance(setting.value, int) else _DEFAULTS.retries


async def build_chain(
    datasette: Datasette,
    policy: Policy,
    routed: tuple[str | None, KeyStatus | None],
    requires: Requirements = NOTHING_REQUIRED,
    *,
    timeout: float,
) -> Chain:
    """Return the chain for ``policy``'s purpose, as a prompt with no actor would try it.

    Args:
        routed: The model routing chose (``None`` when it found none) and its key status.
        requires: What the purpose requires of a model (``Purpose.requires``).
        timeout: Seconds to wait for the policy's answers (a hanging ``llm_filter_models``):
            past it, the fallbacks are shown unchecked.
    """
    if not _written(policy):
        return await _chain(datasette, policy, routed, requires)
    try:
        return await asyncio.wait_for(_chain(datasette, policy, routed, requires), timeout)
    except asyncio.TimeoutError:
        reason = (
            "not checked: the policy did not answer in time (a hook, llm_default_model or "
            "llm_filter_models, is not answering)"
        )
    except Exception as error:
        reason = (
            f"not checked: asking the policy raised {type(error).__name__}: {shown(error)} "
            "(a plugin's llm_filter_models fails)"
        )
    return _unchecked_chain(policy, routed[0], reason)


async def _chain(
    datasette: Datasette,
    policy: Policy,
    routed: tuple[str | None, KeyStatus | None],
    requires: Requirements,
) -> Chain:
    settings = _settings(policy)
    retries = _retries(settings[0])
    routed_id, routed_key = routed
    chain: list[ChainLink] = []
    if routed_id is not None:
        chain.append(_link(policy, retries, routed_id, None, None, routed_key))
    seen: dict[str, str] = {}
    for path, ref in _written(policy):
        model_id = policy.canonical(ref.model_id)
        model = find_model(ref.model_id, policy.registry)
        refusal: tuple[str, Refusal] | None = None
        key: KeyStatus | None = None
        if model_id == routed_id:
            refusal = (_ROUTED_MODEL, "routed_model")
        elif model_id in seen:
            refusal = (f"it is already in the chain at {seen[model_id]}", "repeated")
        elif model is None:
            refusal = ("it is not installed", "not_installed")
        else:
            key = await key_status(datasette, policy.reference(model_id).keys, model)
            refusal = await _screened(datasette, policy, model, requires, key)
        seen.setdefault(model_id, path)
        chain.append(_link(policy, retries, ref.model_id, path, refusal, key))
    return Chain(tuple(chain), *settings)


async def _screened(
    datasette: Datasette,
    policy: Policy,
    model: AsyncModel,
    requires: Requirements,
    key: KeyStatus,
) -> tuple[str, Refusal] | None:
    """Ask the policy about ``model`` as ``routing.admit`` does; name the kind of a refusal."""
    screening = await screen(datasette, policy, [model], None, require_keys=True, requires=requires)
    if screening.models:
        return None
    reason = screening.refused[model.model_id]
    kind: Refusal
    if model.model_id in policy.blocked:
        kind = "blocked"
    elif policy.refusal(model.model_id) is not None:
        kind = "not_allowed"
    elif requires.missing(model):
        kind = "lacks_requirement"
    elif not key.available:
        kind = "keyless"
    else:
        kind = "filtered"
    return reason, kind


def _unchecked_chain(policy: Policy, routed_id: str | None, reason: str) -> Chain:
    """Return the chain with every fallback left unchecked, for ``reason`` (a hanging hook)."""
    settings = _settings(policy)
    retries = _retries(settings[0])
    links: list[ChainLink] = []
    if routed_id is not None:
        links.append(_link(policy, retries, routed_id, None, None, None))
    for path, ref in _written(policy):
        links.append(_link(policy, retries, ref.model_id, path, (reason, "unchecked"), None))
    return Chain(tuple(links), *settings)
