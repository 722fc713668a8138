"""How a provider's exception becomes a ``ProviderError``: its kind, status and Retry-After.

The exceptions are the real ones of the ``openai`` and ``anthropic`` client libraries (which llm's
OpenAI plugin and llm-anthropic raise), built as their clients build them.
"""

from __future__ import annotations

import pickle
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from datasette_llm import ProviderError
from datasette_llm.log import remember
from datasette_llm.provider_errors import classify

REQUEST = httpx2.Request("POST", "https://provider.invalid/v1/chat")


def status_error(cls: Any, status: int, message: str = "m", **headers: str) -> Exception:
    response = httpx2.Response(status, headers=headers, request=REQUEST)
    error: Exception = cls(message, response=response, body=None)
    return error


@pytest.mark.parametrize("library", [openai, anthropic])
@pytest.mark.parametrize(
    ("name", "status", "kind"),
    [
        ("RateLimitError", 429, "rate_limit"),
        ("InternalServerError", 500, "server_error"),
        ("AuthenticationError", 401, "auth"),
        ("PermissionDeniedError", 403, "auth"),
        ("BadRequestError", 400, "bad_request"),
        ("NotFoundError", 404, "bad_request"),
        ("UnprocessableEntityError", 422, "bad_request"),
    ],
)
def test_each_status_error_of_both_client_libraries_has_its_kind(
    library: Any, name: str, status: int, kind: str
) -> None:
    error = classify(status_error(getattr(library, name), status), "m")
    assert (error.kind, error.status, error.model_id) == (kind, status, "m")


@pytest.mark.parametrize(
    ("name", "status", "kind"),
    [
        ("OverloadedError", 529, "server_error"),
        ("ServiceUnavailableError", 503, "server_error"),
        ("GatewayTimeoutError", 504, "timeout"),
        ("RequestTimeoutError", 408, "timeout"),
        ("ContractSpendLimitReachedError", 429, "rate_limit"),
        ("RequestTooLargeError", 413, "bad_request"),
    ],
)
def test_anthropics_own_errors_have_their_kinds(name: str, status: int, kind: str) -> None:
    assert classify(status_error(getattr(anthropic, name), status), "claude").kind == kind


@pytest.mark.parametrize("library", [openai, anthropic])
def test_timeouts_and_connection_errors_of_both_libraries(library: Any) -> None:
    assert classify(library.APITimeoutError(request=REQUEST), "m").kind == "timeout"
    assert classify(library.APIConnectionError(request=REQUEST), "m").kind == "connection"


def test_the_http_clients_own_errors_and_timeout_error() -> None:
    assert classify(httpx2.RemoteProtocolError("peer closed"), "m").kind == "connection"
    assert classify(httpx2.ReadTimeout("slow"), "m").kind == "timeout"
    assert classify(TimeoutError(), "m").kind == "timeout"
    assert classify(ConnectionResetError(), "m").kind == "connection"


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("This model's maximum context length is 8192 tokens", "context_window"),
        ("prompt is too long: 210000 tokens > 200000 maximum: too many tokens", "context_window"),
        ("The response was filtered due to the content management policy", "content_policy"),
        ("'temperature' must be a number", "bad_request"),
    ],
)
def test_a_bad_request_about_the_context_window_or_the_content_policy_says_so(
    message: str, kind: str
) -> None:
    assert classify(status_error(openai.BadRequestError, 400, message), "m").kind == kind


def test_retry_after_is_read_in_seconds_milliseconds_or_as_a_date() -> None:
    error = classify(status_error(openai.RateLimitError, 429, **{"retry-after": "7"}), "m")
    assert error.retry_after == 7
    error = classify(status_error(openai.RateLimitError, 429, **{"retry-after-ms": "250"}), "m")
    assert error.retry_after == 0.25
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # long past: no wait
    error = classify(status_error(openai.RateLimitError, 429, **{"retry-after": date}), "m")
    assert error.retry_after == 0
    error = classify(status_error(openai.RateLimitError, 429, **{"retry-after": "soon"}), "m")
    assert error.retry_after is None


def test_anything_else_is_unknown() -> None:
    assert classify(ValueError("a bug in the caller"), "m").kind == "unknown"
    assert classify(status_error(openai.APIStatusError, 302), "m").kind == "unknown"


def test_a_provider_error_is_returned_as_it_is_and_checks_its_kind() -> None:
    error = ProviderError("rate_limit", "m", "scripted")
    assert classify(error, "other") is error
    with pytest.raises(ValueError, match="Unknown error kind 'rate-limit': use one of rate_limit"):
        ProviderError("rate-limit", "m", "x")  # type: ignore[arg-type]  # the point of the test


def test_the_message_never_holds_a_key_the_provider_quoted() -> None:
    key = "sk-test-0123456789abcdef-quoted"
    remember(key)
    error = classify(status_error(openai.AuthenticationError, 401, f"Bad key {key}"), "m")
    assert key not in str(error) and key not in repr(error)
    assert "Bad key [redacted]" in str(error)


def test_a_provider_error_pickles_with_its_kind() -> None:
    error = ProviderError("timeout", "m", "slow", status=504, retry_after=2.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.model_id, copy.status, copy.retry_after) == ("timeout", "m", 504, 2.0)
