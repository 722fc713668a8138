"""A small OpenAI-compatible provider on 127.0.0.1, for tests that run llm's own OpenAI plugin.

``serve()`` starts it in a thread (uvicorn, which Datasette depends on) at a free port and stops
it on exit. Point a model at it with ``write_extra_models``: llm's ``extra-openai-models.yaml``
with ``api_base``, so llm's real OpenAI plugin and the ``openai`` client run end to end.

``POST /v1/chat/completions`` answers, streamed or not, with the next scripted ``Reply`` (else
``default``): a text, an HTTP error (status, message, headers such as ``Retry-After``), or a
stream cut off after some chunks. Every request is recorded with its headers and JSON body.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    """What the provider answers to one request.

    Attributes:
        text: The assistant's text (streamed as one chunk per word).
        status: An HTTP status other than 200 answers an OpenAI-style error instead.
        message: The error's message.
        headers: Extra response headers, e.g. ``{"retry-after": "1"}``.
        cut_after: For a streamed answer, drop the connection after this many chunks.
    """

    text: str = "hello from the local provider"
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None


@dataclass(frozen=True)
class Seen:
    """A request the provider received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Provider:
    """The ASGI app: scripted replies, recorded requests."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.default = Reply()
        self.requests: list[Seen] = []
        self.port = 0

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        data = json.loads(body or b"{}")
        self.requests.append(Seen(scope["path"], headers, data))
        reply = self.script.pop(0) if self.script else self.default
        if scope["path"] != "/v1/chat/completions":
            await _json(send, 404, {"error": {"message": "not found", "type": "invalid_request"}})
        elif reply.status != 200:
            error = {"error": {"message": reply.message, "type": "error", "code": None}}
            await _json(send, reply.status, error, reply.headers)
        elif data.get("stream"):
            await _stream(send, data.get("model", ""), reply)
        else:
            await _json(send, 200, _completion(data.get("model", ""), reply.text), reply.headers)


async def _json(
    send: Send, status: int, payload: object, headers: dict[str, str] | None = None
) -> None:
    raw = json.dumps(payload).encode()
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    pairs += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": raw})


def _usage(text: str) -> dict[str, int]:
    words = len(text.split())
    return {"prompt_tokens": 3, "completion_tokens": words, "total_tokens": 3 + words}


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(text),
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _stream(send: Send, model: str, reply: Reply) -> None:
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    words = reply.text.split(" ")
    pieces = [word if index == 0 else f" {word}" for index, word in enumerate(words)]
    for index, piece in enumerate(pieces):
        if reply.cut_after is not None and index >= reply.cut_after:
            # Raising mid-body makes uvicorn drop the connection: the client sees the stream cut.
            raise ConnectionAbortedError("the local provider dropped the connection mid-stream")
        delta: dict[str, Any] = {"content": piece}
        if index == 0:
            delta["role"] = "assistant"
        event = f"data: {json.dumps(_chunk(model, delta, None))}\n\n"
        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
    final = _chunk(model, {}, "stop")
    usage = {**_chunk(model, {}, None), "choices": [], "usage": _usage(reply.text)}
    tail = f"data: {json.dumps(final)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve() -> Iterator[Provider]:
    """Run a ``Provider`` on 127.0.0.1 at a free port for the block."""
    provider = Provider()
    provider.port = _free_port()
    config = uvicorn.Config(
        provider, host="127.0.0.1", port=provider.port, log_level="critical", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local OpenAI-compatible provider did not start")
        time.sleep(0.01)
    try:
        yield provider
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def write_extra_models(user_dir: Path, provider: Provider, **models: str | None) -> None:
    """Write llm's ``extra-openai-models.yaml``: each ``model_id=api_key_name`` at ``provider``.

    Underscores in a keyword become dashes in the model id (``local_gpt`` is ``local-gpt``).

    With an ``api_key_name`` the model needs the key llm (and datasette-llm) finds under that
    name; with ``None`` it needs none.
    """
    entries = []
    for name, key_name in models.items():
        model_id = name.replace("_", "-")
        entry: dict[str, object] = {
            "model_id": model_id,
            "model_name": f"{model_id}-upstream",
            "api_base": provider.api_base,
        }
        if key_name is not None:
            entry["api_key_name"] = key_name
        entries.append(entry)
    (user_dir / "extra-openai-models.yaml").write_text(json.dumps(entries))
