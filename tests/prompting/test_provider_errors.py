"""How a provider's exception becomes a ``ProviderError``: its kind, status and Retry-After.

The exceptions are the real ones of the ``openai`` and ``anthropic`` client libraries (which llm's
OpenAI plugin and llm-anthropic raise), built as their clients build them.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import anthropic
import httpx2
import openai
import pytest
from datasette.utils.asgi import Response

from datasette_llm import LLM, ProviderError
from datasette_llm.log import redact, remember
from datasette_llm.provider_errors import LONGEST_RETRY_AFTER, RedactedError, classify, redacted
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.openai_server import Provider, Reply, serve, write_extra_models

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
    # anthropic 2 added the last three; llm-anthropic (tested too) pins anthropic < 2, where
    # a class of that name under APIStatusError stands in for it: the name is what is read.
    error_class = getattr(anthropic, name, None) or type(name, (anthropic.APIStatusError,), {})
    assert classify(status_error(error_class, status), "claude").kind == kind


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


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "infinity"])
def test_a_retry_after_that_is_no_number_of_seconds_is_none(value: str) -> None:
    for header in ("retry-after", "retry-after-ms"):
        error = classify(status_error(openai.RateLimitError, 429, **{header: value}), "m")
        assert error.retry_after is None


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "1e15"},
        {"retry-after": "99999999999"},
        {"retry-after-ms": "1e18"},
        {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"},
    ],
)
def test_a_retry_after_beyond_a_week_counts_as_a_week(headers: dict[str, str]) -> None:
    error = classify(status_error(openai.RateLimitError, 429, **headers), "m")
    assert error.retry_after == LONGEST_RETRY_AFTER == 7 * 86_400


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


# No key in any exception of the chain (the cause and its own cause and context).

KEY: Final = "sk-chain-7f6e5d4c3b2a1098-provider"
TESTS: Final = Path(__file__).resolve().parents[1]  # this suite: its frames hold the key it plays


def chain_of(error: BaseException) -> list[BaseException]:
    """Every exception reachable from ``error`` through ``__cause__`` and ``__context__``."""
    seen: list[BaseException] = []
    waiting = [error]
    while waiting:
        current = waiting.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        waiting.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return seen


def shown_anywhere(error: BaseException) -> str:
    """What a printed traceback, a repr or a walk over the chain's attributes could show, and
    the variables of every frame of its tracebacks (what a handler showing locals prints:
    Datasette's 500 handler, when rich is installed)."""
    parts = ["".join(traceback.format_exception(error))]
    for link in chain_of(error):
        parts.extend([str(link), repr(link), repr(link.args), repr(vars(link))])
        frames = link.__traceback__
        while frames is not None:
            if not frames.tb_frame.f_code.co_filename.startswith(str(TESTS)):  # not ours
                parts.append(repr(frames.tb_frame.f_locals))
            frames = frames.tb_next
    return "\n".join(parts)


def test_the_cause_is_a_redacted_copy_of_the_providers_error_of_its_class() -> None:
    remember(KEY)
    response = httpx2.Response(
        401, headers={"x-echo": f"Bearer {KEY}"}, request=REQUEST, json={"key": KEY}
    )
    raw = openai.AuthenticationError(
        f"Incorrect API key provided: {KEY}",
        response=response,
        body={"error": {"message": f"bad key {KEY}", "code": "invalid_api_key"}},
    )
    try:
        try:
            raise httpx2.ConnectError(f"while sending with {KEY}")
        except httpx2.ConnectError as inner:
            raise raw from inner
    except openai.AuthenticationError:
        pass
    raw.__context__ = ValueError(f"handled meanwhile: {KEY}")
    error = classify(raw, "m")
    assert (error.kind, error.status) == ("auth", 401)
    cause = error.__cause__
    assert isinstance(cause, openai.AuthenticationError) and cause is not raw
    assert str(cause) == "Incorrect API key provided: [redacted]"
    assert (cause.status_code, cause.body) == (
        401,
        {"error": {"message": "bad key [redacted]", "code": "invalid_api_key"}},
    )
    assert not hasattr(cause, "response"), "the response's headers and request carry the key"
    # Where it was raised, as text: its traceback's frames hold the key (this test's do).
    assert cause.__traceback__ is None and raw.__traceback__ is not None
    notes: list[str] = getattr(cause, "__notes__", [])
    assert any("test_the_cause_is_a_redacted_copy" in note for note in notes)
    assert KEY in repr(raw.__traceback__.tb_frame.f_locals)
    assert isinstance(cause.__cause__, httpx2.ConnectError)
    assert str(cause.__cause__) == "while sending with [redacted]"
    assert str(cause.__context__) == "handled meanwhile: [redacted]"
    assert cause.__suppress_context__ is True
    assert KEY not in shown_anywhere(error)
    assert KEY in str(raw), "the provider's own error is left as it was"


def test_an_exception_that_cannot_be_copied_as_its_class_stands_in_as_a_redacted_error() -> None:
    class Opaque(Exception):
        def __init__(self, secret: str, *, extra: object) -> None:
            super().__init__(secret)
            self.extra = extra

        def __str__(self) -> str:
            return f"opaque: {self.extra} {self.args[0]}"

    remember(KEY)
    error = classify(Opaque(KEY, extra=object()), "m")
    assert error.kind == "unknown"  # raised as itself, so its cause stays the caller's own
    copy = redacted(Opaque(KEY, extra="x"))
    assert isinstance(copy, Opaque) and str(copy) == "opaque: x [redacted]"
    standing_in = redacted(Opaque(KEY, extra=object()))
    assert isinstance(standing_in, RedactedError)
    assert standing_in.original_type.endswith("Opaque")
    assert KEY not in str(standing_in) and "[redacted]" in str(standing_in)


@pytest.fixture
def provider(llm_user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    monkeypatch.setenv("DATASETTE_SECRETS_LOCAL_PROVIDER_KEY", KEY)
    with serve() as running:
        write_extra_models(llm_user_dir, running, local_gpt="local")
        yield running


async def test_no_key_reaches_datasettes_500_handler_its_log_or_the_raised_errors_chain(
    make_datasette: MakeDatasette,
    register_plugin: RegisterPlugin,
    provider: Provider,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider.default = Reply(
        status=401,
        message=f"Incorrect API key provided: {KEY}. You can find your API key at ...",
        headers={"x-echoed-authorization": f"Bearer {KEY}"},
    )
    caplog.set_level(logging.INFO)  # the provider's client logs headers at DEBUG: not ours
    caplog.set_level(logging.DEBUG, logger="datasette_llm")

    async def summarize(datasette: Datasette) -> Response:
        model = await LLM(datasette).model(purpose="summaries")
        return Response.text(await (await model.prompt("hi")).text())

    class Routes:
        @hookimpl
        def register_routes(self) -> list[tuple[str, Any]]:
            return [(r"^/-/summarize$", summarize)]

    register_plugin(Routes())
    config = {
        "purposes": {"summaries": {"model": {"model": "local-gpt", "key": "LOCAL_PROVIDER_KEY"}}}
    }
    datasette = make_datasette(config)
    response = await datasette.client.get("/-/summarize")
    assert response.status_code == 500
    printed = capsys.readouterr().err
    assert "Traceback" in printed and "The above exception was the direct cause" in printed
    assert "openai.AuthenticationError: Error code: 401" in printed
    assert (
        "datasette_llm.provider_errors.ProviderError: Model 'local-gpt' failed (auth, HTTP 401)"
        in printed
    )
    assert "Incorrect API key provided: [redacted]" in printed
    assert provider.requests[0].headers["authorization"] == f"Bearer {KEY}", "the key was sent"
    assert KEY not in printed
    assert KEY not in response.text
    assert KEY not in caplog.text

    model = await LLM(datasette).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert (raised.value.kind, raised.value.status) == ("auth", 401)
    assert isinstance(raised.value.__cause__, openai.AuthenticationError)
    assert raised.value.__cause__.status_code == 401
    assert KEY not in shown_anywhere(raised.value)


@pytest.mark.parametrize("around", ["\n", "\r\n", " ", "\t\n"])
async def test_a_key_saved_with_whitespace_around_it_is_sent_without_it(
    make_datasette: MakeDatasette,
    provider: Provider,
    monkeypatch: pytest.MonkeyPatch,
    around: str,
) -> None:
    """A key pasted with a newline at its end: no HTTP header can carry it (httpx refuses to
    send it, quoting it in its error); it is sent without its whitespace, as a ``$file`` is."""
    monkeypatch.setenv("DATASETTE_SECRETS_LOCAL_PROVIDER_KEY", KEY + around)
    config = {
        "purposes": {"summaries": {"model": {"model": "local-gpt", "key": "LOCAL_PROVIDER_KEY"}}}
    }
    model = await LLM(make_datasette(config)).model(purpose="summaries")
    assert await (await model.prompt("hi")).text() == "hello from the local provider"
    [request] = provider.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("around", ["\n", "\r\n", "\t"])
def test_a_key_is_redacted_as_an_http_library_quotes_it_with_its_whitespace_escaped(
    around: str,
) -> None:
    """A key that reaches an HTTP library with a newline at its end (a plugin's own, say) is
    quoted as bytes in its refusal: ``b'Bearer sk-...\\n'``."""
    key = f"sk-escaped-{around.encode().hex()}-0a1b2c3d4e5f"
    remember(key + around)
    quoted = str(
        httpx2.LocalProtocolError(f"Illegal header value {(f'Bearer {key}' + around).encode()!r}")
    )
    assert key in quoted
    assert key not in redact(quoted)
    assert redact(quoted).startswith("Illegal header value b'Bearer [redacted]")


@pytest.mark.parametrize(
    ("event", "kind", "requests"),
    [
        ({"message": f"Invalid key {KEY} here", "type": "invalid_request_error"}, "bad_request", 1),
        ({"message": "The server had an error", "type": "server_error"}, "server_error", 2),
        ({"message": "Something went wrong"}, "server_error", 2),
        ({"message": "Slow down", "type": "rate_limit_exceeded"}, "rate_limit", 1),
    ],
)
async def test_an_error_event_in_the_stream_is_the_providers_failure_of_the_kind_it_reports(
    make_datasette: MakeDatasette,
    provider: Provider,
    event: dict[str, str],
    kind: str,
    requests: int,
) -> None:
    """The openai client raises a stream's error event (status 200 already read) as APIError:
    a provider's failure, classified by the type it reports, its key redacted like any other."""
    provider.default = Reply(text="never whole", error_event=event)
    config = {
        "purposes": {
            "summaries": {
                "model": {"model": "local-gpt", "key": "LOCAL_PROVIDER_KEY"},
                "retries": 1,
                "max_wait": 0.1,
            }
        }
    }
    datasette = make_datasette(config)
    model = await LLM(datasette).model(purpose="summaries")
    with pytest.raises(ProviderError) as raised:
        await model.prompt("hi")
    assert raised.value.kind == kind
    assert isinstance(raised.value.__cause__, openai.APIError)
    assert len(provider.requests) == requests  # retried only when its kind is
    assert KEY not in shown_anywhere(raised.value)
    rows = await LLM(datasette).usage_records()
    assert [row.outcome for row in rows] == [kind] * requests
