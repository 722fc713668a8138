"""What one attempt used and cost: ``UsageRecord``, and its cost at the operator's prices.

A record never holds prompt or response text: who (the actor's id), for what (the purpose),
on which model (asked for, and the attempt's), how many tokens, how long, how it ended, and
what it cost at the operator's prices (``None`` when the model has no price, never 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ..config.values import Price
from ..provider_errors import ErrorKind

__all__ = [
    "ERROR_LENGTH",
    "Outcome",
    "UsageRecord",
    "cached_tokens",
    "cost_of",
    "short_error",
    "usd",
]

ERROR_LENGTH: Final = 300
"""The most characters of a failed attempt's error the ledger keeps (``UsageRecord.error``)."""

Outcome: TypeAlias = "Literal['ok', 'cancelled'] | ErrorKind"
"""How an attempt ended: ``"ok"``, ``"cancelled"`` (sent to the provider, then cancelled by
its caller: a timeout of the caller's, a closed connection), or the kind of its error."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One attempt of one prompt: a response (each step of a chain is one) or a failure.

    Attributes:
        id: A unique id for the record.
        time: When the attempt started, seconds since the epoch (UTC).
        purpose: The purpose name, or ``None``.
        requested_model: The model routing chose for the call.
        model: The model this attempt went to (a fallback, when it differs).
        actor_id: The id of the actor the call was for, or ``None``.
        input_tokens: Input tokens, as the provider reported them (``None``: not reported).
        output_tokens: Output tokens, likewise.
        cached_tokens: Cached input tokens, likewise.
        duration: Seconds from the start of the attempt to its end.
        first_token: Seconds from the start to the first chunk, when it was measured.
        outcome: ``"ok"``, ``"cancelled"`` or the error kind.
        attempt: The attempt's number within its prompt (1 for the first).
        fell_back_from: The model the prompt fell back from to reach this one, if any.
        cost: Estimated US dollars at the configured price, or ``None`` without a price (or
            without token counts). A cancelled attempt costs what it received, and no less
            than its prompt's estimate (``estimate_usd``, or ``max_tokens`` at the price).
        error: For a failed attempt, the provider's error in short (keys redacted, at most
            ``ERROR_LENGTH`` characters); ``None`` otherwise.
        sent: Whether the provider received the attempt's request: ``False`` for a failure
            before it left (a refused connection, a timeout while connecting, the deadline
            passing first), which the provider never saw nor bills. For a model whose client
            datasette-llm does not own, an attempt counts as sent once llm has started it.
            ``None`` in a record an earlier version wrote.
    """

    id: str
    time: float
    purpose: str | None
    requested_model: str
    model: str
    actor_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    duration: float
    first_token: float | None
    outcome: Outcome
    attempt: int
    fell_back_from: str | None
    cost: float | None
    error: str | None = None
    sent: bool | None = None


def cached_tokens(details: Mapping[str, object] | None) -> int | None:
    """Cached input tokens from llm's usage details (OpenAI's or Anthropic's names)."""
    if not details:
        return None
    for name in ("cached_tokens", "cache_read_input_tokens"):
        value = details.get(name)
        if isinstance(value, int):
            return value
    nested = details.get("prompt_tokens_details") or details.get("input_tokens_details")
    if isinstance(nested, Mapping):
        value = nested.get("cached_tokens")
        if isinstance(value, int):
            return value
    return None


def cost_of(
    price: Price | None, input_tokens: int | None, output_tokens: int | None, cached: int | None
) -> float | None:
    """US dollars for these tokens at ``price``; ``None`` without a price or token counts."""
    if price is None or (input_tokens is None and output_tokens is None):
        return None
    fresh = input_tokens or 0
    cost = 0.0
    if cached and price.cached_input is not None:
        cached_count = min(cached, fresh)
        fresh -= cached_count
        cost += cached_count * price.cached_input
    cost += fresh * price.input + (output_tokens or 0) * price.output
    return cost / 1_000_000


def short_error(error: BaseException) -> str:
    """A failed attempt's error as the ledger keeps it: its message (a ``ProviderError``'s is
    redacted), on one line, cut to ``ERROR_LENGTH`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


def usd(value: float) -> str:
    """Format US dollars: cents from $1 up, four decimals below, and two significant digits
    below a hundredth of a cent (``$0.000046``), so no amount spent reads as ``$0.0000``."""
    if value >= 1:
        return f"${value:,.2f}"
    if value == 0 or value >= 0.0001:
        return f"${value:.4f}"
    decimals = 1 - math.floor(math.log10(abs(value)))
    return f"${value:.{decimals}f}"
