"""Own the HTTP behaviour of models built on the ``openai`` and ``anthropic`` clients: one
request per attempt.

llm's OpenAI plugin (``llm.default_plugins.openai_models``) builds a new ``openai.AsyncOpenAI``
for every prompt in its models' ``get_client(key, async_=True)``, and llm-anthropic a new
``anthropic.AsyncAnthropic`` in its models' ``execute()``, each with the client's defaults: up
to two retries of its own, which sleep through ``Retry-After`` inside one of our attempts, pass
no limiter and are never seen by the attempts, and a new HTTP client (TLS, connection pool)
each time. llm has no public way to hand a model a client, so this module is the one place
that adapts one, in the one way each plugin's code allows:

- llm's OpenAI classes (``AsyncChat``, ``AsyncResponses``) and the subclasses that keep llm's
  own ``get_client`` (llm-openrouter's pattern): ``get_client`` is set on the model instance
  (the class and llm are untouched) to a ``PooledClients``. A subclass that overrides
  ``get_client`` (Azure variants, or one returning a client subclass that keeps state per
  response) is left as it is, never shared: ``client_library`` still says its client is
  ``openai``'s, which retries by itself.
- a model whose ``execute`` builds an ``anthropic.AsyncAnthropic`` from a global name of its
  module (llm-anthropic's ``AsyncClaudeMessages`` and its subclasses; recognised by that
  client, not by a module name): the name is bound to an ``AnthropicClients``, which inside
  one of our attempts hands out the pooled client for the same key and base URL, and anywhere
  else builds the client exactly as before (so the plugin's token counting and commands, and
  every prompt not sent through datasette-llm, are unchanged).

Either way the model gets

- the client its plugin built, copied once with ``max_retries=0`` (a public option of both
  clients): every attempt is exactly one request, and every 429 and 5xx reaches the attempts;
- kept and reused for each (endpoint, key, headers) in the event loop that runs the prompt,
  so connections and TLS sessions are pooled; the clients' ``with_options`` copies share the
  underlying HTTP client;
- inside one attempt (``one_attempt``), a copy with the attempt's timeout as the client's own;
- whose HTTP client (the library's default, ``DefaultAsyncHttpxClient``) has a request event
  hook adding httpx's public ``trace`` extension to each request of an attempt: the attempt
  counts a request once its body starts going out (``watch``), so a cancelled attempt is
  accounted only when its provider was sent the request, not while the plugin is still
  preparing it or the client connecting; and a response event hook keeping each response of
  an attempt, so that a chain's stream its caller leaves part way closes its connection at
  once (``OpenAttempt.close_responses``).

Clients are kept per event loop, at most ``POOL_SIZE`` per loop (the least recently used one
is closed when another is needed), and closed when their loop shuts down its asynchronous
generators (``loop.shutdown_asyncgens()``, as ``asyncio.run`` and ``asyncio.Runner`` do). What
a client reads from the environment when it is built stays as it was then: for ``openai``,
``OPENAI_BASE_URL`` (for a model without ``api_base``), ``OPENAI_ORG_ID``,
``OPENAI_PROJECT_ID``; for ``anthropic``, ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_AUTH_TOKEN``
(part of what a pooled client is kept for); for both, the HTTP client's proxies
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and certificates
(``SSL_CERT_FILE``, ``SSL_CERT_DIR``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "POOL_SIZE",
    "AnthropicClients",
    "Counted",
    "OpenAttempt",
    "PooledClients",
    "adapt",
    "adapted",
    "client_library",
    "one_attempt",
    "prepare",
]

POOL_SIZE: Final = 32
"""The most clients kept for one event loop; each (endpoint, key, headers) has its own."""

# The attempt running in this context: its timeout, and the clients it holds.
_ATTEMPT: Final[ContextVar[_Attempt | None]] = ContextVar("datasette_llm_attempt", default=None)
_LOCK: Final = threading.Lock()
# The clients of each event loop, by the loop itself. One per process: a client belongs to the
# loop whose connections it holds, whatever Datasette instance sent the prompt.
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()

# httpcore's trace event for a request whose body starts going out (``http11.``, ``http2.``):
# its headers have been written, and nothing is awaited before the body is handed to the socket.
_SENDING: Final = "send_request_body.started"

# Who the client was built for: endpoint, API type, version and engine, key, headers, and
# whether llm logs the responses (LLM_OPENAI_SHOW_RESPONSES gives it a logging HTTP client).
_Identity = tuple[object, ...]


def client_library(model: object) -> Literal["openai", "anthropic"] | None:
    """Return the client library ``model`` is built on: ``"openai"`` for llm's OpenAI classes
    and their subclasses, ``"anthropic"`` for a model whose ``execute`` builds an
    ``anthropic.AsyncAnthropic``; else ``None``."""
    from llm.default_plugins.openai_models import AsyncChat, AsyncResponses

    if isinstance(model, (AsyncChat, AsyncResponses)):
        return "openai"
    return "anthropic" if _anthropic_site(type(model)) is not None else None


def adapt(model: object) -> bool:
    """Make each of ``model``'s requests one attempt's, through a pooled client; return
    whether ``model`` is so adapted.

    For a model of llm's OpenAI classes whose class keeps llm's own ``get_client``: installs a
    ``PooledClients`` as the instance's ``get_client`` the first time. For a model whose
    ``execute`` builds an ``anthropic.AsyncAnthropic`` from the global name of its module:
    binds that name to an ``AnthropicClients`` the first time. Any other model is left as it
    is. Calling it again is cheap and changes nothing.
    """
    own = vars(model).get("get_client") if hasattr(model, "__dict__") else None
    if own is not None:
        return isinstance(own, PooledClients) and own.model is model
    library = client_library(model)
    if library == "anthropic":
        namespace, name = _anthropic_site(type(model)) or ({}, "")
        with _LOCK:
            built = namespace[name]
            if not isinstance(built, AnthropicClients):
                namespace[name] = AnthropicClients(built)
        return True
    if library is None:
        return False
    from llm.default_plugins.openai_models import AsyncChat

    if getattr(type(model), "get_client", None) is not AsyncChat.get_client:
        return False  # its plugin builds its own clients: they are not ours to share
    model.get_client = PooledClients(model)  # type: ignore[attr-defined]
    return True


def prepare(model: object, key: str | None) -> None:
    """Build now the pooled client ``model``'s next request with ``key`` will use, if ``model``
    is one of llm's OpenAI models adapted here and the client is not pooled yet.

    Called before a request takes its turn under the model's ``rpm``: a process's first client
    takes a while to build (the client library's imports, its certificates), and a turn taken
    before it would leave late, together with the next turns' requests. A model whose plugin
    builds its client inside ``execute`` (llm-anthropic) is built when it sends, as before.
    """
    own = vars(model).get("get_client") if hasattr(model, "__dict__") else None
    if not isinstance(own, PooledClients) or own.model is not model:
        return
    # Only a head start: whatever fails here (no key) fails again, as the provider's error of
    # the attempt, when the request is sent.
    with suppress(Exception):
        pooled: Any = own.model
        own(pooled.get_key(key) if pooled.needs_key else key, async_=True)


def adapted(model: object) -> bool:
    """Whether ``adapt`` has made ``model``'s requests one attempt's."""
    own = vars(model).get("get_client") if hasattr(model, "__dict__") else None
    if own is not None:
        return isinstance(own, PooledClients) and own.model is model
    site = _anthropic_site(type(model))
    return site is not None and isinstance(site[0][site[1]], AnthropicClients)


_Site = tuple[dict[str, Any], str]
# What _anthropic_site found for each model class ("" for nothing). One per process, as the
# classes are; weak, so a class that goes away takes its entry with it.
_sites: weakref.WeakKeyDictionary[type, _Site | str] = weakref.WeakKeyDictionary()


def _anthropic_site(cls: type) -> _Site | None:
    """Where ``cls.execute`` finds the ``anthropic.AsyncAnthropic`` it builds: its module's
    globals and the name (llm-anthropic: ``AsyncAnthropic``), or ``None``."""
    found = _sites.get(cls)
    if found is None:
        found = _sites[cls] = _find_anthropic_site(cls) or ""
    return found if isinstance(found, tuple) else None


def _find_anthropic_site(cls: type) -> _Site | None:
    execute = getattr(cls, "execute", None)
    code = getattr(execute, "__code__", None)
    namespace = getattr(execute, "__globals__", None)
    anthropic = sys.modules.get("anthropic")
    if code is None or not isinstance(namespace, dict) or anthropic is None:
        return None
    for name in code.co_names:
        value = namespace.get(name)
        if value is anthropic.AsyncAnthropic or isinstance(value, AnthropicClients):
            return namespace, name
    return None


class Counted(Protocol):
    """Where an attempt's requests are counted (``metering.Received``).

    Attributes:
        requests: Requests sent, or ``None`` when the attempt's client does not report them.
    """

    requests: int | None


@contextmanager
def one_attempt(timeout: float | None) -> Iterator[OpenAttempt]:
    """Mark the block as one attempt: an adapted model's client times out after ``timeout``
    seconds (``None``: the client's default), and is not closed while the block uses it.

    Yields the attempt, for ``OpenAttempt.watch``.
    """
    attempt = OpenAttempt(timeout)
    try:
        with attempt.running():
            yield attempt
    finally:
        attempt.end()


class OpenAttempt:
    """One attempt whose stream runs in pieces, its caller's code in between (a chain consumed
    item by item): as ``one_attempt`` inside each ``running()`` block; the clients the pieces
    used are not closed until ``end()``, once the stream has ended."""

    __slots__ = ("_attempt",)

    def __init__(self, timeout: float | None) -> None:
        self._attempt = _Attempt(timeout)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Run the block as part of this attempt (the context is the caller's again after)."""
        token = _ATTEMPT.set(self._attempt)
        try:
            yield
        finally:
            _ATTEMPT.reset(token)

    def end(self) -> None:
        """Let go of the clients the attempt used: one the pool has let go of is closed."""
        self._attempt.release()

    async def close_responses(self) -> None:
        """Close the HTTP responses of the attempt's requests that are still open (a stream
        its caller left part way): their connections close now, and the provider stops
        sending. Only an adapted model's requests are known (httpx's public ``aclose()``)."""
        responses, self._attempt.responses = self._attempt.responses, []
        for ref in responses:
            response = ref()
            if response is not None and not response.is_closed:
                await response.aclose()

    def watch(self, counted: Counted, model: object) -> None:
        """Count in ``counted.requests`` each request the attempt sends to ``model``, from 0,
        when ``model`` is adapted; else set it to ``None`` (not known).

        A request counts once its body starts going out (its headers have been written).
        Called again (the next step of a chain), it counts in the new ``counted`` instead.
        """
        self._attempt.counted = counted
        counted.requests = 0 if adapted(model) else None


class PooledClients:
    """An adapted model's ``get_client``: its asynchronous clients come from the pool.

    A synchronous client (``async_=False``) is llm's own, built as llm builds it.

    Attributes:
        model: The model it is installed on.
    """

    __slots__ = ("model",)

    def __init__(self, model: Any) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"<PooledClients of {self.model.model_id!r}>"

    def __call__(self, key: str | None = None, *, async_: bool = False) -> object:
        model = self.model
        build: Callable[..., object] = type(model).get_client
        if not async_:
            return build(model, key, async_=False)
        logged = bool(os.environ.get("LLM_OPENAI_SHOW_RESPONSES"))
        identity: _Identity = (
            model.api_base,
            model.api_type,
            model.api_version,
            model.api_engine,
            model.get_key(key) if model.needs_key else None,
            tuple(sorted((str(k), str(v)) for k, v in (model.headers or {}).items())),
            logged,
        )
        # llm's logging HTTP client (LLM_OPENAI_SHOW_RESPONSES) is kept: not traced.
        return _pooled(
            identity,
            lambda: build(model, key, async_=True),
            "openai",
            not logged,
            _resource_of(model),
        )


class AnthropicClients:
    """Stands in for ``anthropic.AsyncAnthropic`` in the module of a plugin whose ``execute``
    builds one for every prompt (llm-anthropic): inside an attempt, the pooled client for the
    same arguments (key, base URL); anywhere else (token counting, the plugin's own commands),
    or given an HTTP client of the plugin's own, a new client built exactly as the plugin
    asked.

    Attributes:
        built: The class it stands in for.
    """

    __slots__ = ("built",)

    def __init__(self, built: Callable[..., Any]) -> None:
        self.built = built

    def __repr__(self) -> str:
        return "<AnthropicClients: pooled anthropic.AsyncAnthropic inside datasette-llm attempts>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        attempt = _ATTEMPT.get()
        if attempt is None:
            return self.built(*args, **kwargs)
        if args or "http_client" in kwargs:
            attempt.unwatch()  # an HTTP client of the plugin's own: its requests are not seen
            return self.built(*args, **kwargs)
        identity: _Identity = (
            "anthropic",
            tuple(sorted((name, repr(value)) for name, value in kwargs.items())),
            # Read by the client when it is built, for what the arguments leave out.
            os.environ.get("ANTHROPIC_BASE_URL"),
            os.environ.get("ANTHROPIC_AUTH_TOKEN"),
        )
        return _pooled(identity, lambda: self.built(**kwargs), "anthropic", True, "messages")


def _pooled(
    identity: _Identity,
    build: Callable[[], object],
    library: Literal["openai", "anthropic"],
    traced: bool,
    resource: str,
) -> Any:
    """The pooled client of ``library`` for ``identity`` in the running loop (built with
    ``build`` the first time), held by the running attempt, with its timeout.

    ``traced``: the pooled copy gets an HTTP client of its own whose requests are counted as
    they go out (``_Pool.add``). ``resource``: the client's attribute the requests go through
    (``_load_first_request``).
    """
    loop = asyncio.get_running_loop()
    with _LOCK:
        pool = _pools.get(loop)
        if pool is None:
            pool = _pools[loop] = _Pool(loop)
    entry = pool.get(identity)
    attempt = _ATTEMPT.get()
    if entry is None:
        module = importlib.import_module(library)
        built = build()
        if type(built) is not _CLIENT_CLASSES[library](module):
            if attempt is not None:
                attempt.unwatch()
            return built  # not the client this module knows: left as it is
        entry = pool.add(identity, built, module, traced=traced)
        _load_first_request(entry.client, resource)
    if attempt is None:
        return entry.client
    attempt.hold(pool, entry)
    if not entry.traced:
        attempt.unwatch()  # its requests are not seen going out
    return entry.with_timeout(attempt.timeout)


# The asynchronous client class of each library this module pools.
_CLIENT_CLASSES: Final[dict[str, Callable[[ModuleType], type]]] = {
    "openai": lambda module: module.AsyncOpenAI,
    "anthropic": lambda module: module.AsyncAnthropic,
}


@dataclass(slots=True, eq=False)
class _Entry:
    """One pooled client, the attempts using it, and whether the pool has let it go."""

    client: Any  # openai.AsyncOpenAI, anthropic.AsyncAnthropic
    traced: bool
    users: int = 0
    evicted: bool = False
    # The copy with the timeout the last attempt asked for: a purpose's attempts mostly ask for
    # the same one, and a copy costs some 17 us (a deadline's remainder makes a fresh one).
    timed: tuple[float, Any] | None = None

    def with_timeout(self, timeout: float | None) -> Any:
        """The client, or a copy of it (sharing its HTTP client) that times out after
        ``timeout``."""
        if timeout is None:
            return self.client
        timed = self.timed
        if timed is None or timed[0] != timeout:
            timed = self.timed = (timeout, self.client.with_options(timeout=timeout))
        return timed[1]


@dataclass(slots=True, eq=False)
class _Attempt:
    """One attempt: its timeout, the pooled clients it uses, where its requests are counted."""

    timeout: float | None
    held: list[tuple[_Pool, _Entry]] = field(default_factory=list)
    counted: Counted | None = None
    responses: list[weakref.ref[httpx2.Response]] = field(default_factory=list)

    def unwatch(self) -> None:
        """Its client does not report its requests: they are not known."""
        if self.counted is not None:
            self.counted.requests = None
            self.counted = None

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's ``trace`` extension of the attempt's requests: count each one sent."""
        counted = self.counted
        if event.endswith(_SENDING) and counted is not None and counted.requests is not None:
            counted.requests += 1

    def hold(self, pool: _Pool, entry: _Entry) -> None:
        entry.users += 1
        self.held.append((pool, entry))

    def release(self) -> None:
        for pool, entry in self.held:
            entry.users -= 1
            if entry.evicted and entry.users == 0:
                pool.retire(entry)
        self.held.clear()


class _Pool:
    """The clients of one event loop, least recently used first.

    It refers to its loop weakly: the loop's shutdown of asynchronous generators closes every
    client and removes the pool.
    """

    __slots__ = ("_closer", "_closing", "_loop", "_starting", "clients")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self.clients: OrderedDict[_Identity, _Entry] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._closer = _close_at_loop_end(self)
        # Run the closer to its first yield, so that the loop's shutdown runs its ``finally``.
        self._starting: asyncio.Task[None] | None = loop.create_task(_start(self._closer))
        self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting = None  # the task refers to the loop: let go of it

    def get(self, identity: _Identity) -> _Entry | None:
        """Return the pooled client for ``identity``, if there is one, as the most recent."""
        entry = self.clients.get(identity)
        if entry is not None:
            self.clients.move_to_end(identity)
        return entry

    def add(self, identity: _Identity, built: Any, library: ModuleType, *, traced: bool) -> _Entry:
        """Keep a copy of ``built`` (a client of ``library``: ``openai``, ``anthropic``) that
        never retries by itself; let the oldest client go when there are more than
        ``POOL_SIZE``.

        ``traced``: the copy has an HTTP client of its own, the library's default
        (``DefaultAsyncHttpxClient``) with ``_trace_request`` as a request event hook, and
        ``built``'s own, unused, is closed; else (llm's logging HTTP client) it shares
        ``built``'s, and its requests are not counted as they go out.
        """
        if traced:
            hooks = {"request": [_trace_request], "response": [_keep_response]}
            http = library.DefaultAsyncHttpxClient(event_hooks=hooks)
            client = built.with_options(max_retries=0, http_client=http)
            self._close(built)
        else:
            client = built.with_options(max_retries=0)
        entry = self.clients[identity] = _Entry(client, traced)
        while len(self.clients) > POOL_SIZE:
            _, oldest = self.clients.popitem(last=False)
            oldest.evicted = True
            if oldest.users == 0:
                self.retire(oldest)
        return entry

    def retire(self, entry: _Entry) -> None:
        """Close a client the pool has let go of and no attempt uses."""
        self._close(entry.client)

    def _close(self, client: Any) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        task = loop.create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every client, and forget the pool."""
        entries = list(self.clients.values())
        self.clients.clear()
        for entry in entries:
            with suppress(Exception):
                await entry.client.close()
        loop = self._loop()
        if loop is not None:
            with _LOCK:
                if _pools.get(loop) is self:
                    del _pools[loop]


def _load_first_request(client: Any, resource: str) -> None:
    """Load now what ``client``'s first request would: the module of its ``resource``
    (``openai``'s ``chat`` and ``responses`` are imported on first use, some 15 and 40 ms), and
    anyio's backend for the running loop (``httpcore`` makes its first lock with it, some
    15 ms); several times that on a busy machine.

    A pooled client is built before its request takes a turn under the model's ``rpm``
    (``prepare``); these imports would otherwise come after the turn, and a process's first
    request would leave late, within the same second as the requests of the turns after it.
    Once per process: later clients find the modules imported.
    """
    with suppress(Exception):  # only a head start; the first request imports them anyway
        import anyio

        anyio.Event()
        getattr(client, resource)


def _resource_of(model: object) -> str:
    """The attribute of an ``openai`` client ``model``'s requests go through: ``responses``
    for llm's Responses models, ``chat`` for the others."""
    mro = type(model).__mro__
    return "responses" if any(c.__name__ == "_SharedResponses" for c in mro) else "chat"


async def _trace_request(request: httpx2.Request) -> None:
    """The request event hook of the pooled HTTP clients: the attempt sending ``request``, if
    it counts its requests, traces it (httpx's ``trace`` extension; one already there is kept,
    called after it)."""
    attempt = _ATTEMPT.get()
    if attempt is None or attempt.counted is None:
        return
    theirs = request.extensions.get("trace")
    if theirs is None:
        request.extensions["trace"] = attempt.trace
        return

    async def both(event: str, info: dict[str, Any]) -> None:
        await attempt.trace(event, info)
        await theirs(event, info)

    request.extensions["trace"] = both


async def _keep_response(response: httpx2.Response) -> None:
    """The response event hook of the pooled HTTP clients: the attempt whose request it
    answers keeps it (weakly), so that it can close it if its caller leaves its stream part
    way (``OpenAttempt.close_responses``)."""
    attempt = _ATTEMPT.get()
    if attempt is None:
        return
    kept = attempt.responses
    kept[:] = [ref for ref in kept if (open_ := ref()) is not None and not open_.is_closed]
    kept.append(weakref.ref(response))


async def _close_at_loop_end(pool: _Pool) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await pool.close()


async def _start(closer: AsyncIterator[None]) -> None:
    await closer.__anext__()
