"""Test a route: send a short prompt through a purpose's routed chain, as a real call would.

``try_route`` returns a ``LiveResult``; ``route_test_view`` serves it at
``POST /-/llm/test/<purpose>`` to actors allowed ``llm-manage-routing``.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import llm
from datasette import Forbidden
from datasette.utils.asgi import Response

from ..errors import ConfigurationError, ModelNotFoundError, nearest
from ..log import redact
from ..prompting.client import LLM
from ..provider_errors import ErrorKind, ProviderError
from ..routing.catalog import get_purposes
from ..routing.overlay import config_for
from ..routing.permissions import MANAGE_ROUTING, can_manage_routing
from ..usage.budgets import BudgetExceededError

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

    from ..actors import Actor
    from ..usage.records import UsageRecord

__all__ = [
    "LIVE_PROMPT",
    "LIVE_TIMEOUT",
    "TEST_ROUTE_PATTERN",
    "LiveAttempt",
    "LiveErrorKind",
    "LiveResult",
    "known_purposes",
    "route_test_view",
    "try_route",
    "unknown_purpose",
]

LIVE_PROMPT: Final = "Reply with the word OK."
"""The prompt a live test sends."""

LIVE_TIMEOUT: Final = 30.0
"""Seconds a live test may take, every retry and fallback included."""

TEST_ROUTE_PATTERN: Final = r"^/-/llm/test/(?P<purpose>[A-Za-z0-9_.\-]+)$"
"""Matches ``/-/llm/test/<purpose>``."""

LiveErrorKind: TypeAlias = (
    "ErrorKind | Literal['no_model', 'not_allowed', 'budget', 'configuration']"
)
"""Why a live test failed: the provider's error kind, or ``"no_model"`` (nothing may serve the
purpose), ``"not_allowed"`` (the actor may not use it), ``"budget"`` (its budget refuses
prompts), ``"configuration"`` (the configuration is malformed)."""

_REPLY_SHOWN: Final = 200

# The records of the live test running in this context (and the tasks it starts).
_collecting: ContextVar[list[UsageRecord] | None] = ContextVar(
    "datasette_llm_live_records", default=None
)


@dataclass(frozen=True, slots=True)
class LiveAttempt:
    """One attempt of a live test.

    Attributes:
        model_id: The model tried.
        duration: Seconds from its start to its answer or failure.
        error: The kind of its failure, ``"cancelled"`` when the test's time ran out while
            the provider had it, or ``None`` when it answered.
    """

    model_id: str
    duration: float
    error: ErrorKind | Literal["cancelled"] | None = None

    def to_json(self) -> dict[str, object]:
        """Return the attempt as JSON-ready values."""
        return {"model": self.model_id, "duration": self.duration, "error": self.error}


@dataclass(frozen=True, slots=True)
class LiveResult:
    """What a live test of one purpose's route found. It never holds a key.

    Attributes:
        purpose: The purpose tested.
        routed_model: The model routing chose first, or ``None`` when nothing may serve it.
        model_id: The model that answered (a fallback when the routed one failed), or ``None``.
        latency: Seconds from the start of the test to its answer or failure.
        input_tokens: Input tokens of every attempt, as the providers reported them (``None``:
            not reported).
        output_tokens: Output tokens, likewise.
        attempts: Every attempt, in order.
        error: Why the test failed, or ``None`` when a model answered.
        message: The error's message, without any key; ``None`` when a model answered.
        reply: The start of the answer's text, or ``None``.
    """

    purpose: str
    routed_model: str | None
    model_id: str | None
    latency: float
    input_tokens: int | None
    output_tokens: int | None
    attempts: tuple[LiveAttempt, ...]
    error: LiveErrorKind | None = None
    message: str | None = None
    reply: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a model answered."""
        return self.error is None

    def to_json(self) -> dict[str, object]:
        """Return the result as JSON-ready values."""
        return {
            "ok": self.ok,
            "purpose": self.purpose,
            "routed_model": self.routed_model,
            "model": self.model_id,
            "latency": self.latency,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "error": self.error,
            "message": self.message,
            "reply": self.reply,
        }


def _total(values: list[int | None]) -> int | None:
    counted = [value for value in values if value is not None]
    return sum(counted) if counted else None


def _failure(error: Exception) -> LiveErrorKind:
    if isinstance(error, ProviderError):
        return error.kind
    if isinstance(error, ModelNotFoundError | llm.UnknownModelError):
        return "no_model"
    if isinstance(error, Forbidden):
        return "not_allowed"
    if isinstance(error, BudgetExceededError):
        return "budget"
    if isinstance(error, ConfigurationError):
        return "configuration"
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return "unknown"


async def try_route(
    datasette: Datasette,
    purpose: str,
    actor: Actor | None = None,
    *,
    prompt: str = LIVE_PROMPT,
    timeout: float = LIVE_TIMEOUT,
) -> LiveResult:
    """Send ``prompt`` through ``purpose``'s routed chain for ``actor``; report what happened.

    The prompt takes the path of a real call (``LLM(datasette).model(purpose=...)``): hooks,
    policy, retries, fallbacks, and a usage record for each attempt in the ledger. Every
    failure is caught and reported; the whole test is cut off after ``timeout`` seconds.
    """
    records: list[UsageRecord] = []
    routed: list[str] = []
    answer: list[llm.AsyncResponse] = []

    def listen(record: UsageRecord) -> None:
        if _collecting.get() is records:
            records.append(record)

    async def run() -> str:
        _collecting.set(records)
        model = await LLM(datasette).model(purpose=purpose, actor=actor)
        routed.append(model.model_id)
        response = await model.prompt(prompt)
        answer.append(response)
        return await response.text()

    error: Exception | None = None
    reply: str | None = None
    started = time.perf_counter()
    try:
        stop = LLM(datasette).on_usage(listen)
    except ConfigurationError as malformed:
        return LiveResult(purpose, None, None, 0.0, None, None, (), "configuration", str(malformed))
    try:
        reply = await asyncio.wait_for(asyncio.ensure_future(run()), timeout)
    except Exception as failed:
        error = failed
    finally:
        stop()
    latency = time.perf_counter() - started
    attempts = tuple(
        LiveAttempt(
            record.model, record.duration, None if record.outcome == "ok" else record.outcome
        )
        for record in records
    )
    if not attempts and isinstance(error, ProviderError):  # usage recording is off
        attempts = tuple(LiveAttempt(a.model_id, a.duration, a.error) for a in error.attempts)
    input_tokens = _total([record.input_tokens for record in records])
    output_tokens = _total([record.output_tokens for record in records])
    if answer and not records:
        usage = await answer[0].usage()
        input_tokens, output_tokens = usage.input, usage.output
    result = LiveResult(
        purpose=purpose,
        routed_model=routed[0] if routed else None,
        model_id=answer[0].model.model_id if answer else None,
        latency=latency,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        attempts=attempts,
    )
    if error is None:
        return replace(result, reply=redact((reply or "")[:_REPLY_SHOWN]))
    kind = _failure(error)
    message = redact(str(error))
    if not message:
        message = (
            f"No answer within {timeout:g} seconds." if kind == "timeout" else redact(repr(error))
        )
    return replace(result, model_id=None, error=kind, message=message)


def unknown_purpose(name: str, names: list[str]) -> str:
    """Return the message for a purpose ``name`` that is none of ``names``, nearest first."""
    near = nearest(name, names)
    hint = f" — did you mean {near!r}?" if near is not None else "."
    return f"Unknown purpose {name!r}{hint} Purposes: {', '.join(names) or 'none'}."


def known_purposes(datasette: Datasette) -> list[str]:
    """Return the names of every registered or configured purpose, sorted."""
    names = {purpose.name for purpose in get_purposes(datasette)}
    try:
        names.update(config_for(datasette).purposes)
    except ConfigurationError:
        pass
    return sorted(names)


def _wants_json(request: Request) -> bool:
    if request.args.get("_format") == "json":
        return True
    return "application/json" in request.headers.get("accept", "")


def _refusal(message: str, status: int, as_json: bool) -> Response:
    if as_json:
        return Response.json({"ok": False, "error": message, "status": status}, status=status)
    return Response.text(message, status=status)


async def route_test_view(datasette: Datasette, request: Request) -> Response:
    """Run a live test of a purpose's route on ``POST``; 403 unless ``llm-manage-routing``."""
    as_json = _wants_json(request)
    purpose = request.url_vars["purpose"]
    if not await can_manage_routing(datasette, request.actor):
        message = (
            f"Permission denied: testing a route needs the {MANAGE_ROUTING!r} action. "
            "Sign in as root, or grant it under permissions: in datasette.yaml."
        )
        if as_json:
            return _refusal(message, 403, True)
        raise Forbidden(message)
    if request.method != "POST":
        response = _refusal("Test a route with POST (the button on /-/llm).", 405, as_json)
        response.headers["Allow"] = "POST"
        return response
    names = known_purposes(datasette)
    if purpose not in names:
        message = unknown_purpose(purpose, names)
        return _refusal(message, 404, as_json)
    result = await try_route(datasette, purpose, request.actor)
    if as_json:
        return Response.json(result.to_json())
    html = await datasette.render_template(
        "llm_route_test.html", {"result": result, "prompt": LIVE_PROMPT}, request=request
    )
    return Response.html(html)
