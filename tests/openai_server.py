"""A small OpenAI-compatible provider on 127.0.0.1, for tests and benchmarks of llm's OpenAI plugin,
which answers Anthropic's Messages API too (``POST /v1/messages``, for llm-anthropic).

``serve()`` runs it in a thread (asyncio and uvicorn's ``h11``) at a free port for a block. Point
models at it with ``write_extra_models`` (llm's ``extra-openai-models.yaml`` with ``api_base``):
llm's real OpenAI plugin and the ``openai`` client then run end to end.

``POST /v1/chat/completions`` (and ``POST /v1/messages``, in Anthropic's format: its server-sent
events, its error bodies) answers, streamed or not, with the next scripted ``Reply`` (else
``default``): a text, an HTTP error (status, message, headers such as ``Retry-After``), a stream
cut off after some chunks, a slow first byte, or a connection dropped with no answer at all.

Provider-wide limits, faults and latency are checked in that order (``Provider``). Every request
is recorded with its headers, JSON body and the moment it was received, and tallied in
``counts``; ``received_at`` and ``busiest_second`` read how fast requests came in.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import h11

_RETRY_HEADER: Final = "x-stainless-retry-count"
_MESSAGES: Final = "/v1/messages"
_PATHS: Final = ("/v1/chat/completions", _MESSAGES)
_QUOTA_MESSAGE: Final = "You exceeded your current quota, please check your plan and billing."


@dataclass(frozen=True)
class Reply:
    """What the provider answers to one request.

    Attributes:
        text: The assistant's text (streamed as one chunk per word).
        status: An HTTP status other than 200 answers an OpenAI-style error instead.
        message: The error's message.
        headers: Extra response headers, e.g. ``{"retry-after": "1"}``.
        cut_after: Cut the connection after this many chunks (not streamed: after half the body).
        delay: Seconds before the first byte of the answer (a slow provider, for timeouts).
        interval: Seconds between the chunks of a streamed answer (tokens trickling in).
        drop: Close the connection without answering: the client sees a connection error.
        error_event: Streamed answers only: after the first chunk, an error event in the
            stream (OpenAI's ``data: {"error": {...}}``, this its ``error``), as a provider
            failing mid-answer sends; the answer then ends.
        tool_call: Answer with a call of this tool, ``(name, arguments)``, instead of text.
    """

    text: str = "hello from the local provider"
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    delay: float = 0.0
    interval: float = 0.0
    drop: bool = False
    error_event: dict[str, Any] | None = None
    tool_call: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class Seen:
    """A request the provider received.

    Attributes:
        at: When the whole request had been read (``time.monotonic()``; not compared, so a
            ``Seen`` equals another of the same request).
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default=0.0, compare=False)


@dataclass(slots=True)
class Counts:
    """What the provider did, one tally per outcome (a request has one outcome).

    Attributes:
        requests: Requests received (any path).
        retried: Requests marked as the ``openai`` client's retry (``x-stainless-retry-count``).
        ok: Complete answers.
        rate_limited: 429s beyond ``rate_limit``.
        quota: 429s for ``quota_exhausted``.
        server_errors: 500s, drawn as faults or scripted.
        errors: Other error statuses (scripted), and 404s.
        drops: Connections closed without an answer.
        cuts: Answers cut part way.
        delayed: Answers delayed by a drawn ``timeouts`` fault (counted as well as their outcome).
        abandoned: Clients that hung up before the answer was sent (e.g. timed out waiting).
        connections: Connections the clients opened (not an outcome: kept-alive connections
            carry many requests).
    """

    requests: int = 0
    retried: int = 0
    ok: int = 0
    rate_limited: int = 0
    quota: int = 0
    server_errors: int = 0
    errors: int = 0
    drops: int = 0
    cuts: int = 0
    delayed: int = 0
    abandoned: int = 0
    connections: int = 0


@dataclass(kw_only=True)
class Provider:
    """The provider: scripted replies, provider-wide limits and faults, recorded requests.

    Attributes:
        script: Replies for the next requests, first one first; then ``default``.
        requests: Every request received.
        counts: What the provider did.
        latency: Seconds added before every answer.
        quota_exhausted: Answer 429 to everything (``insufficient_quota``, no ``Retry-After``).
        rate_limit: A sliding window: at most this many requests admitted in any one second (under
            1: one in any ``1 / rate_limit`` seconds); the rest answer 429 with ``Retry-After``
            (whole seconds) and ``retry-after-ms``, for when the window frees a place. Refused
            requests take no place.
        server_errors: The chance of a 500, drawn once for each admitted request.
        drops: The chance of a connection closed without an answer.
        timeouts: The chance of an answer ``timeout_delay`` seconds late.
        cuts: The chance of an answer cut off after one chunk.
        random: Draws the faults (``seed`` seeds it).
    """

    script: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    requests: list[Seen] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    port: int = 0
    latency: float = 0.0
    rate_limit: float | None = None
    quota_exhausted: bool = False
    server_errors: float = 0.0
    drops: float = 0.0
    timeouts: float = 0.0
    cuts: float = 0.0
    timeout_delay: float = 30.0
    seed: int = 0
    random: random.Random = field(init=False, repr=False)
    _admitted: collections.deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        chances = (self.server_errors, self.drops, self.timeouts, self.cuts)
        if not all(0 <= chance <= 1 for chance in chances) or sum(chances) > 1:
            raise ValueError(f"Fault chances must be 0..1 and sum to at most 1: got {chances}.")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit is requests per second, above 0: got {self.rate_limit}.")
        self.random = random.Random(self.seed)
        self._admitted = collections.deque()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _refused(self) -> Reply | None:
        """Return the 429 for a request beyond the quota or the rate, or admit it."""
        if self.quota_exhausted:
            self.counts.quota += 1
            return Reply(status=429, message=_QUOTA_MESSAGE)
        if self.rate_limit is None:
            return None
        window = max(1.0, 1 / self.rate_limit)
        room = max(1, math.floor(self.rate_limit * window))
        now = time.monotonic()
        while self._admitted and self._admitted[0] <= now - window:
            self._admitted.popleft()
        if len(self._admitted) < room:
            self._admitted.append(now)
            return None
        self.counts.rate_limited += 1
        wait = self._admitted[0] + window - now
        seconds, milliseconds = max(1, math.ceil(wait)), round(wait * 1000)
        headers = {"retry-after": f"{seconds}", "retry-after-ms": f"{milliseconds}"}
        return Reply(status=429, message="Rate limit reached for requests", headers=headers)

    def _fault(self, reply: Reply) -> Reply:
        """Return ``reply``, or the fault drawn for this request."""
        draw = self.random.random()
        for chance, fault in (
            (self.server_errors, Reply(status=500, message="The server had an error")),
            (self.drops, Reply(drop=True)),
            (self.timeouts, dataclasses.replace(reply, delay=reply.delay + self.timeout_delay)),
            (self.cuts, dataclasses.replace(reply, cut_after=1)),
        ):
            if draw < chance:
                self.counts.delayed += fault.delay > reply.delay
                return fault
            draw -= chance
        return reply

    def plan(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Reply:
        """Record one request and decide its answer."""
        self.requests.append(Seen(path, headers, body, time.monotonic()))
        self.counts.requests += 1
        if headers.get(_RETRY_HEADER, "0") not in ("", "0"):
            self.counts.retried += 1
        if path not in _PATHS:
            return Reply(status=404, message="not found")
        refused = self._refused()
        if refused is not None:
            return refused
        reply = self._fault(self.script.pop(0) if self.script else self.default)
        return dataclasses.replace(reply, delay=reply.delay + self.latency)

    def received_at(
        self, model: str | None = None, since: float = -math.inf, until: float = math.inf
    ) -> list[float]:
        """When each request was received (``time.monotonic()``), in order.

        Args:
            model: Only requests for this model, as the request names it (the ``model_name``
                of llm's ``extra-openai-models.yaml``, such as ``primary-gpt-upstream``).
            since: Only requests received at or after this moment.
            until: Only requests received before this moment.
        """
        return sorted(
            seen.at
            for seen in list(self.requests)  # a copy: the server's thread appends meanwhile
            if since <= seen.at < until and (model is None or seen.body.get("model") == model)
        )

    def busiest_second(
        self, model: str | None = None, since: float = -math.inf, until: float = math.inf
    ) -> int:
        """The most requests received within any one second (a window of one second ending
        at each request: ``(at - 1, at]``), of the requests ``received_at`` selects."""
        times = self.received_at(model, since, until)
        most, first = 0, 0
        for last, at in enumerate(times):
            while times[first] <= at - 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after another (keep-alive) until it closes."""
        self.counts.connections += 1
        wire = _Wire(reader, writer)
        try:
            while (received := await wire.request()) is not None:
                request, raw = received
                headers = {name.decode(): value.decode() for name, value in request.headers}
                body = json.loads(raw or b"{}")
                path = request.target.decode().split("?")[0]
                reply = self.plan(path, headers, body)
                if not await self._answer(wire, reply, body, anthropic=path == _MESSAGES):
                    return
                if wire.http.our_state is h11.MUST_CLOSE:
                    return
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()

    async def _answer(
        self, wire: _Wire, reply: Reply, request: dict[str, Any], *, anthropic: bool = False
    ) -> bool:
        """Send ``reply`` (in Anthropic's format, for ``anthropic``); return whether the
        connection stays open."""
        if reply.delay and not await wire.wait(reply.delay):
            self.counts.abandoned += 1
            return False
        if reply.drop:
            self.counts.drops += 1
            wire.writer.transport.abort()
            return False
        self.counts.server_errors += reply.status == 500
        self.counts.errors += reply.status not in (200, 429, 500)
        content_type, pieces, body = (_anthropic_body if anthropic else _body)(reply, request)
        pairs = [("content-type", content_type), *reply.headers.items()]
        if body:
            pairs.append(("content-length", str(len(body))))
        await wire.send(h11.Response(status_code=reply.status, headers=pairs))
        cut = reply.cut_after if reply.status == 200 else None
        if cut is not None and body:
            pieces, cut = [body[: len(body) // 2], body[len(body) // 2 :]], 1
        for index, piece in enumerate(pieces[:cut]):
            if index and reply.interval and not await wire.wait(reply.interval):
                self.counts.abandoned += 1
                return False
            await wire.send(h11.Data(data=piece))
        if cut is not None and cut < len(pieces):
            self.counts.cuts += 1
            wire.writer.close()  # mid-body: the client sees the answer cut off
            return False
        await wire.send(h11.EndOfMessage())
        self.counts.ok += reply.status == 200
        return True


@dataclass
class _Wire:
    """One client connection: its asyncio streams and h11's state of the HTTP exchange."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER))

    async def request(self) -> tuple[h11.Request, bytes] | None:
        """Read the next whole request, or ``None`` when the client closed the connection."""
        if self.http.our_state is h11.DONE:
            self.http.start_next_cycle()
        request, body = None, b""
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, body
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def send(self, event: h11.Response | h11.Data | h11.EndOfMessage) -> None:
        data = self.http.send(event)
        if data:
            self.writer.write(data)
        await self.writer.drain()

    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; return ``False`` as soon as the client hangs up."""
        with suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(self.reader.read(65536), seconds):
                pass  # a client sends nothing more while it waits for its answer
            return False
        return True


def _body(reply: Reply, request: dict[str, Any]) -> tuple[str, list[bytes], bytes]:
    """Return the content type, the pieces to send and, unless streamed, the whole body."""
    model = str(request.get("model", ""))
    if reply.status != 200:
        code = "insufficient_quota" if reply.message == _QUOTA_MESSAGE else None
        error = {"error": {"message": reply.message, "type": "error", "code": code}}
        body = json.dumps(error).encode()
        return "application/json", [body], body
    if reply.tool_call is not None:
        return _tool_call(model, *reply.tool_call, streamed=bool(request.get("stream")))
    if request.get("stream"):
        events = _events(model, reply.text)
        if reply.error_event is not None:
            failed = json.dumps({"error": reply.error_event})
            events = [events[0], f"data: {failed}\n\n".encode()]
        return "text/event-stream", events, b""
    body = json.dumps(_completion(model, reply.text)).encode()
    return "application/json", [body], body


def _tool_call(
    model: str, name: str, arguments: dict[str, Any], *, streamed: bool
) -> tuple[str, list[bytes], bytes]:
    """An answer calling tool ``name``: one event with the whole call, then the tail."""
    call = {"id": "call_local", "type": "function"}
    function = {"name": name, "arguments": json.dumps(arguments)}
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    if not streamed:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**call, "function": function}],
        }
        choice = _choice(message=message, finish_reason="tool_calls")
        body = json.dumps(_envelope(model, "chat.completion", [choice], usage=usage)).encode()
        return "application/json", [body], body
    kind = "chat.completion.chunk"
    delta = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"index": 0, **call, "function": function}],
    }
    events = [
        _envelope(model, kind, [_choice(delta=delta, finish_reason=None)]),
        _envelope(model, kind, [_choice(delta={}, finish_reason="tool_calls")]),
        _envelope(model, kind, [], usage=usage),
    ]
    return (
        "text/event-stream",
        [*(f"data: {json.dumps(e)}\n\n".encode() for e in events), b"data: [DONE]\n\n"],
        b"",
    )


def _envelope(model: str, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    head = {"id": "chatcmpl-local", "object": obj, "created": int(time.time()), "model": model}
    return {**head, "choices": choices, **extra}


def _choice(**fields: Any) -> dict[str, Any]:
    return {"index": 0, **fields}


def _usage(text: str) -> dict[str, int]:
    words = len(text.split())
    return {"prompt_tokens": 3, "completion_tokens": words, "total_tokens": 3 + words}


def _completion(model: str, text: str) -> dict[str, Any]:
    choice = _choice(message={"role": "assistant", "content": text}, finish_reason="stop")
    return _envelope(model, "chat.completion", [choice], usage=_usage(text))


def _events(model: str, text: str) -> list[bytes]:
    """Return the server-sent events of a streamed answer: one per word, then the tail."""
    first, *rest = text.split(" ")
    deltas = [{"role": "assistant", "content": first}, *({"content": f" {w}"} for w in rest)]
    choices = [_choice(delta=delta, finish_reason=None) for delta in deltas]
    choices.append(_choice(delta={}, finish_reason="stop"))
    kind = "chat.completion.chunk"
    events = [_envelope(model, kind, [choice]) for choice in choices]
    events.append(_envelope(model, kind, [], usage=_usage(text)))
    return [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [b"data: [DONE]\n\n"]


# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_ERRORS: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _anthropic_body(reply: Reply, request: dict[str, Any]) -> tuple[str, list[bytes], bytes]:
    """``_body`` in the format of Anthropic's Messages API."""
    model = str(request.get("model", ""))
    if reply.status != 200:
        kind = _ANTHROPIC_ERRORS.get(reply.status, "api_error")
        error = {"type": "error", "error": {"type": kind, "message": reply.message}}
        body = json.dumps(error).encode()
        return "application/json", [body], body
    words = reply.text.split(" ")
    usage = {"input_tokens": 3, "output_tokens": len(reply.text.split())}
    if not request.get("stream"):
        message = _anthropic_message(model, [{"type": "text", "text": reply.text}], usage)
        body = json.dumps(message).encode()
        return "application/json", [body], body
    start = _anthropic_message(model, [], {"input_tokens": 3, "output_tokens": 1})
    start["stop_reason"] = None
    block = {"type": "text", "text": ""}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": block},
    ]
    for index, word in enumerate(words):
        delta = {"type": "text_delta", "text": word if index == 0 else f" {word}"}
        events.append({"type": "content_block_delta", "index": 0, "delta": delta})
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
    pieces = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    return "text/event-stream", pieces, b""


def _anthropic_message(
    model: str, content: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": "msg_local",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


@contextmanager
def serve(**settings: Any) -> Iterator[Provider]:
    """Run a ``Provider(**settings)`` on 127.0.0.1 at a free port for the block."""
    provider = Provider(**settings)
    started = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        server = await asyncio.start_server(provider.handle, "127.0.0.1", 0, backlog=1024)
        provider.port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        running.append((asyncio.get_running_loop(), stop))
        started.set()
        await stop.wait()
        server.close()  # asyncio.run then cancels the connections still open

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the local OpenAI-compatible provider did not start")
    try:
        yield provider
    finally:
        loop, stop = running[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


Upstream: TypeAlias = "Provider | str"
"""Where a model's requests go: a running ``Provider``, or the ``api_base`` of one."""


def write_extra_models(
    user_dir: Path,
    provider: Upstream | Mapping[str, Upstream],
    *,
    supports_tools: bool | None = None,
    **models: str | None,
) -> None:
    """Write llm's ``extra-openai-models.yaml``, pointing models at local providers.

    With one provider, each ``model_id=api_key_name`` keyword is a model at it; underscores in a
    keyword become dashes in the model id (``local_gpt`` is ``local-gpt``). With a mapping of
    model ids to providers (``{"primary": first, "fallback": second}``), each model goes to its
    own provider, and a keyword names the ``api_key_name`` of the model of that id.

    With an ``api_key_name`` the model needs the key llm (and datasette-llm) finds under that
    name; with ``None`` (or no keyword, for a mapping) it needs none. ``supports_tools``: the
    models may be given tools (llm's ``supports_tools: true``).
    """
    keys = {name.replace("_", "-"): key for name, key in models.items()}
    if isinstance(provider, Mapping):
        targets = dict(provider)
        unknown = sorted(set(keys) - set(targets))
        if unknown:
            raise ValueError(f"Key names given for models not in the mapping: {unknown}.")
    else:
        targets = {name.replace("_", "-"): provider for name in models}
    entries = []
    for model_id, upstream in targets.items():
        entry: dict[str, object] = {
            "model_id": model_id,
            "model_name": f"{model_id}-upstream",
            "api_base": upstream if isinstance(upstream, str) else upstream.api_base,
        }
        if keys.get(model_id) is not None:
            entry["api_key_name"] = keys[model_id]
        if supports_tools:
            entry["supports_tools"] = True
        entries.append(entry)
    (user_dir / "extra-openai-models.yaml").write_text(json.dumps(entries))
