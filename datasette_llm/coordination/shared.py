"""Limits, cool-downs and budgets shared through Redis by every process that names it.

Each decision is one Lua script (``coordination/scripts.py``) on Redis's clock: a request's
turn under ``rpm`` (GCRA: each request takes the next turn, ``60 / rpm`` seconds after the one
before, and sleeps until it), a place under ``concurrency`` (a lease that expires unless
renewed, so a process that dies gives its places back), a cool-down (a key expiring when it
ends; one probe once it has, claimed with ``SET NX``), and a budget's room (its spend and the
holds of prompts in flight, each expiring unless renewed).

Redis failing never fails a prompt. The first error (unreachable, timed out, refused) turns
the coordinator local: it logs one warning, its status says why, and every call goes to a
``LocalCoordinator`` keeping ``1 / processes`` of each limit, while a background task pings
Redis every ``retry_seconds``; once Redis answers, it logs that limits are shared again and
calls go back to Redis. Places and holds taken locally meanwhile are given back there too. Each
side counts what the other still holds: the places held through Redis when it failed count
against the local share, and turns taken through Redis go before the local ones. Once Redis
answers again, the places still held locally are added to it as leases (``ADOPT``), and the
budget holds of prompts still in flight as holds (``ADOPT_HOLDS``), so every process counts
them until they are given back or settled; a process's next turn through Redis comes one
interval after its last local one; and the callers still waiting for a local place or turn
stop waiting there and ask Redis (``_unless_back``): no local queue outlasts the outage. The
other processes notice Redis answer within a ping of their own: until then (``retry_seconds``
and a connection's timeout) a process leaves room, under each ``concurrency``, for the share
each of them may still hold locally, and its turns keep to its share's pace under ``rpm``.

Processes also tell each other of changes through it: ``publish`` sends a message on a channel
(under the prefix) and ``listen`` hears every process's, from one task per channel and event
loop on a connection of its own, which never retries by itself: when it fails, Redis is down
as for any call (logged once, the status says why), and once Redis answers again the task
subscribes again and tells its listener that messages may have been missed meanwhile (as it
does when it first subscribes).

A Redis password is never shown: ``status.where`` and the log name the URL with
``shown_url``, a problem quoted from an error has the password replaced by ``***``, and the
logger redacts it from every line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar
from urllib.parse import unquote, urlsplit

from ..config.values import CoordinationSettings, shown_url
from ..log import logger, remember
from . import scripts
from .coordinator import Claim, CoolDown, CoordinationStatus, Hold, Refused, Release
from .local import FIRST_COOL_DOWN, LONGEST_COOL_DOWN, POLL_FIRST, POLL_LONGEST, LocalCoordinator

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "INSTALL",
    "PING_SECONDS",
    "Heard",
    "RedisCoordinator",
    "RedisMissing",
    "problem_of",
]

INSTALL: Final = "pip install 'datasette-llm[redis]'"
_LEASE_SECONDS: Final = 15.0
"""How long a place under ``concurrency``, a budget hold or a probe of a cooled model lasts
unless renewed: renewed every third of it while held, so what a process that died held comes
back within this."""
_WAITER_SECONDS: Final = 2.0
"""How long a caller waiting for a place keeps its turn without asking again (it asks at least
every ``POLL_LONGEST``): one whose process died, or that went local, is then forgotten."""
_STREAK_SECONDS: Final = 3600.0
"""How long a model's rate limits in a row are remembered without a try."""
_PERIOD_SECONDS: Final = 35 * 86_400.0
"""How long a budget's spend in a period is kept: longer than a month."""
_CONNECT_SECONDS: Final = 1.0
_COMMAND_SECONDS: Final = 2.0
_LISTEN_SECONDS: Final = 0.5
"""How long a listener waits for a message before waiting again, and noticing it is stopped: a
cancellation arriving while redis-py connects can be lost in it (measured with redis-py 8.2),
so a listener also checks whether it was stopped or cancelled between waits."""
_HEALTH_SECONDS: Final = 30
"""How often an idle listener's connection is pinged, to notice a Redis gone without a word."""
PING_SECONDS: Final = 1.0
"""How long ``RedisCoordinator.ping`` waits for Redis by default."""

_T = TypeVar("_T")

Heard: TypeAlias = Callable[[str | None], Awaitable[None]]
"""What ``RedisCoordinator.listen`` calls: with each message, or ``None`` when messages may
have been missed (once subscribed, first and again after Redis failed)."""


class RedisMissing(ImportError):
    """``coordination: {redis: ...}`` is configured, but redis-py is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "plugins.datasette-llm.coordination.redis is set, but the redis package is not "
            f"installed: {INSTALL}. Or leave coordination out to keep limits, cool-downs and "
            "budgets in each process."
        )


def _client(url: str, *, retries: bool = True) -> Redis:
    """A client for ``url``; with ``retries=False``, one that never retries a failed command
    or reconnects by itself (a listener's: it must know when its subscription broke)."""
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise RedisMissing() from None
    options: dict[str, Any] = {}
    if not retries:
        options.update(retry=Retry(NoBackoff(), 0), health_check_interval=_HEALTH_SECONDS)
    client: Redis = Redis.from_url(
        url,
        socket_connect_timeout=_CONNECT_SECONDS,
        socket_timeout=_COMMAND_SECONDS,
        decode_responses=True,
        **options,
    )
    return client


def _password(url: str) -> str | None:
    """The password in ``url``, if any."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def problem_of(error: BaseException, url: str) -> str:
    """Return ``error`` in one line, with the password of ``url`` (if any) replaced by ``***``."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    password = _password(url)
    if password:
        for form in sorted({password, unquote(password)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


class _Unreachable:
    """What a script call returns when Redis failed: the local coordinator answers instead."""


_DOWN: Final = _Unreachable()


class _Answering:
    """What a local wait gives way to when Redis answers again: ask it instead."""


_BACK: Final = _Answering()


class RedisCoordinator:
    """Share every model's limits and cool-down, and every budget, through one Redis.

    Attributes:
        settings: Where Redis is, how many processes share it, and the keys' prefix.
        local: What answers while Redis cannot be reached: ``1 / processes`` of each limit.
        lease_seconds: How long a place, a hold or a probe lasts unless renewed.
        retry_seconds: Seconds between tries to reach Redis again once it failed.
    """

    def __init__(
        self,
        settings: CoordinationSettings,
        *,
        lease_seconds: float = _LEASE_SECONDS,
        retry_seconds: float = 1.0,
    ) -> None:
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.retry_seconds = retry_seconds
        self._where = shown_url(settings.redis)
        password = _password(settings.redis)
        if password:
            remember(password)  # never in a log line
            remember(unquote(password))
        self._status = CoordinationStatus("redis", True, self._where, time.time())
        self.local = LocalCoordinator(settings.processes or 1, status=self._status)
        self._redis = _client(settings.redis)  # raises RedisMissing before anything else
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._leases: dict[str, str] = {}  # lease id -> its sorted set
        # Places taken locally while Redis failed and not in it yet: lease id -> its sorted set.
        self._local_places: dict[str, str] = {}
        # Places given back and holds settled while Redis failed: removed once it answers.
        self._given_back: dict[str, str] = {}  # lease id -> its sorted set
        self._turns_given_up: dict[str, list[str]] = {}  # lease id -> the waiting keys
        self._settled_meanwhile: dict[str, Hold] = {}
        # Of ``_leases``, the places taken locally and added to Redis once it answered again.
        self._adopted: set[str] = set()
        # model -> the latest turn under its rpm this process took through Redis (monotonic)
        self._last_turns: dict[str, float] = {}
        self._holds: dict[str, Hold] = {}  # held through Redis, by id
        # Budget holds taken locally while Redis failed and not in it yet: hold id -> the hold.
        self._local_holds: dict[str, Hold] = {}
        self._probes: dict[str, str] = {}  # token -> the probe key it claimed
        self._renewing: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._listening: dict[str, asyncio.Task[None]] = {}
        self._freed = asyncio.Event()
        self._back = asyncio.Event()  # set once Redis answers again after the outage under way
        # Until then (time.monotonic()), Redis answers again and the other processes may not
        # have noticed yet: each may still hold its share of places locally, not in Redis.
        self._noticing_until = 0.0
        # Costs charged while Redis could not be reached, by (purpose, period start): added to
        # the shared spend once it answers again, so the outage's spend is not forgotten.
        self._unsettled: dict[tuple[str, float], float] = {}
        # The shared counters' values this process has caught up with (``count``, ``counted``).
        self.seen: dict[str, int] = {}

    def __repr__(self) -> str:
        state = "shared" if self._status.shared else "local"
        return f"<RedisCoordinator {self._where} {state}>"

    @property
    def status(self) -> CoordinationStatus:
        """Shared while Redis answers; local, with the reason, while it does not."""
        return self._status

    # Keys and calls

    def _key(self, *parts: object) -> str:
        return ":".join([self.settings.prefix, *(str(part) for part in parts)])

    def _client_now(self) -> Redis:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a client's connections belong to one event loop
            if self._loop is not None:
                self._redis = _client(self.settings.redis)
            self._loop, self._scripts = loop, {}
        return self._redis

    async def _ask(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """``await call(client)``; ``_DOWN`` if Redis failed (noted: ``_lost``) or had, and is
        not back yet (a task pings it meanwhile)."""
        if not self._status.shared:
            self._keep_reconnecting()
            return _DOWN
        try:
            return await call(self._client_now())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # ConnectionError, TimeoutError, a refused command...
            self._lost(error)
            return _DOWN

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """Run the script ``name`` of ``scripts``; ``_DOWN`` if Redis failed (or had)."""

        def run(client: Any) -> Awaitable[Any]:
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = client.register_script(getattr(scripts, name))
            return script(keys=list(keys), args=[_text(arg) for arg in args])

        return await self._ask(run)

    def _lost(self, error: Exception) -> None:
        if not self._status.shared:
            return
        problem = problem_of(error, self.settings.redis)
        self._status = CoordinationStatus("redis", False, self._where, time.time(), problem)
        self._back = asyncio.Event()
        logger.warning(
            "datasette-llm: Redis at %s failed (%s): until it answers again, this "
            "process keeps %s of each model's rpm and concurrency to itself, and its own "
            "cool-downs and budget holds. Prompts go on meanwhile; Redis is tried every %g s.",
            self._where,
            problem,
            "all" if self.local.scale == 1 else f"1/{self.local.scale}",
            self.retry_seconds,
        )
        self._freed.set()  # waiters for a shared place go local now
        self._keep_reconnecting()

    def _keep_reconnecting(self) -> None:
        """Make sure a task in the running event loop pings Redis until it answers (one made
        in an event loop that has ended since pings no more)."""
        task = self._reconnecting
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self._reconnecting = loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._status.shared:
            await asyncio.sleep(self.retry_seconds)
            try:  # each ping bounded, whatever the client's own retries: see _noticing_until
                await asyncio.wait_for(self._client_now().ping(), _CONNECT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                continue
            down_for = time.time() - self._status.since
            back = self._back
            # Each process pings every retry_seconds, a ping waiting up to _CONNECT_SECONDS.
            self._noticing_until = time.monotonic() + self.retry_seconds + _CONNECT_SECONDS
            self._status = CoordinationStatus("redis", True, self._where, time.time())
            # A warning, as its failure was: ``datasette serve`` shows no INFO line.
            logger.warning(
                "datasette-llm: Redis at %s answers again after %.1f s: limits, cool-downs and "
                "budgets are shared by every process again. Nothing to do.",
                self._where,
                down_for,
            )
            await self._adopt_local_places()
            await self._adopt_local_holds()
            await self._forget_given_back()
            back.set()  # the callers waiting locally ask Redis now (or again, if it failed)
        await self._settle_unsettled()

    async def _unless_back(
        self,
        work: Coroutine[Any, Any, _T],
        undo: Callable[[_T], None] | None = None,
    ) -> _T | _Answering:
        """``await work`` (a local wait, while Redis cannot be reached), unless Redis answers
        again first: then the wait is cancelled and ``_BACK`` returned, for the caller to ask
        Redis. What ``work`` got as it was cancelled along with its caller goes to ``undo``."""
        back = self._back
        task = asyncio.get_running_loop().create_task(work)
        answering = asyncio.get_running_loop().create_task(back.wait())
        try:
            await asyncio.wait((task, answering), return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()
            if undo is not None:
                task.add_done_callback(functools.partial(_undo_result, undo))
            raise
        finally:
            answering.cancel()
        if task.cancelled():
            return _BACK
        return task.result()  # done before it could be cancelled: what it got stands

    def _later(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the writes started in the background (places given back, holds settled)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # Limits

    async def pace(self, model: str, rpm: float, within: float | None) -> bool:
        """Take the next turn of ``model`` under ``rpm`` shared by every process, and wait."""
        while True:
            began = time.monotonic()
            longest = -1 if within is None else max(0.0, within) * 1000
            interval = 60_000 / rpm
            # While the other processes may not have noticed Redis answer again, and still send
            # at their local share's pace, the turns this one takes keep to its share's.
            noticing = max(0.0, (self._noticing_until - began) * 1000)
            slower = 60_000 / self.local.share(rpm)
            # No turn sooner than one interval after this process's last (a local one is not
            # in Redis; one through Redis is, and this changes nothing).
            last = self._last_turns.get(model)
            step = slower if noticing else interval
            earliest = 0.0 if last is None else max(0.0, (last - began) * 1000 + step)
            got = await self._run(
                "PACE",
                [self._key("rpm", model)],
                [interval, longest, earliest, noticing, slower],
            )
            if got is not _DOWN:
                break
            paced = await self._unless_back(self._pace_locally(model, rpm, within))
            if not isinstance(paced, _Answering):
                return paced
            if within is not None:  # Redis answers again: ask it, with the time left
                within -= time.monotonic() - began
        taken, wait = int(got[0]), float(got[1]) / 1000
        if not taken:
            return False
        turn = began + wait  # no later than Redis's turn: the next one's earliest stays true
        self._last_turns[model] = max(turn, self._last_turns.get(model, 0.0))
        if wait > 0:
            await asyncio.sleep(wait)
        return True

    async def _pace_locally(self, model: str, rpm: float, within: float | None) -> bool:
        # The turns already taken through Redis go first: local turns start one interval after
        # the last of them.
        last = self._last_turns.get(model)
        queued = 0.0 if last is None else last + 60 / rpm - time.monotonic()
        if queued > 0:
            if within is not None and queued > within:
                return False
            await asyncio.sleep(queued)
            within = None if within is None else within - queued
        if not await self.local.pace(model, rpm, within):
            return False
        self._last_turns[model] = max(time.monotonic(), self._last_turns.get(model, 0.0))
        return True

    async def lease(self, model: str, limit: int, within: float | None) -> Release | None:
        """Take one of ``model``'s ``limit`` places shared by every process: the callers of
        every process take them in the order they began to wait."""
        key = self._key("leases", model)
        lease_id = uuid.uuid4().hex
        waits = within is None or within > 0  # else a place now or none: it takes no turn
        try:
            release = await self._lease(model, key, lease_id, limit, within, waits)
        except BaseException:
            if waits:
                self._later(self._give_up_turn(model, lease_id))
            raise
        if waits and (release is None or lease_id in self._local_places):  # its turn is held
            await self._give_up_turn(model, lease_id)
        return release

    async def _give_up_turn(self, model: str, lease_id: str) -> None:
        """End the turn of a caller that stopped waiting for a place of ``model``, so the
        callers after it move up: now, or once Redis answers again."""
        waiters = [self._key("waiting", model), self._key("waiting", model, "seen")]
        if not self._status.shared or await self._run("GIVE_UP", waiters, [lease_id]) is _DOWN:
            self._turns_given_up[lease_id] = waiters

    async def _lease(
        self,
        model: str,
        key: str,
        lease_id: str,
        limit: int,
        within: float | None,
        waits: bool,
    ) -> Release | None:
        waiters = [self._key("waiting", model), self._key("waiting", model, "seen")]
        queue = "1" if waits else "0"
        started = time.monotonic()
        poll = POLL_FIRST
        while True:
            freed = self._freed
            # The places this process took locally while Redis failed and are not in it yet
            # count until given back; so, while the others may not have noticed Redis answer
            # yet, do the shares they may still hold locally.
            free = limit - sum(1 for held in self._local_places.values() if held == key)
            if time.monotonic() < self._noticing_until:
                free -= (self.local.scale - 1) * self.local.places(limit)
            got = await self._run(
                "LEASE",
                [key, *waiters],
                [free, lease_id, _ms(self.lease_seconds), _ms(_WAITER_SECONDS), queue],
            )
            left = None if within is None else within - (time.monotonic() - started)
            if got is _DOWN:
                # Likewise the places it holds through Redis count against its local share.
                held = functools.partial(self._held_through_redis, key)
                taken = await self._unless_back(
                    self.local.lease(model, limit, left, held), _release_taken
                )
                if isinstance(taken, _Answering):
                    continue  # Redis answers again: ask it, with the time left
                if taken is None:
                    return None
                if self._status.shared:  # Redis answered as the place came: ask it instead
                    taken()
                    continue
                self._local_places[lease_id] = key
                return self._local_releaser(lease_id, key, taken)
            if int(got) == 1:
                self._leases[lease_id] = key
                self._renew_while_held()
                return self._releaser(lease_id, key)
            if left is not None and left <= 0:
                return None
            nap = poll * random.uniform(0.5, 1.0)  # processes polling apart
            try:
                await asyncio.wait_for(freed.wait(), nap if left is None else min(nap, left))
            except asyncio.TimeoutError:
                pass
            poll = min(poll * 2, POLL_LONGEST)

    def _held_through_redis(self, key: str) -> int:
        """Places of the model of ``key`` this process took through Redis, not given back (the
        ones it took locally and added to Redis since count locally already)."""
        return sum(
            1
            for lease_id, held in self._leases.items()
            if held == key and lease_id not in self._adopted
        )

    def _local_releaser(self, lease_id: str, key: str, release_local: Release) -> Release:
        """Give back a place taken locally: locally, and through Redis once it was added."""

        def release() -> None:
            if self._local_places.pop(lease_id, None) is None and lease_id in self._adopted:
                self._adopted.discard(lease_id)
                self._releaser(lease_id, key)()
            release_local()
            self._freed.set()  # the callers waiting for a place count the local ones
            self._freed = asyncio.Event()

        return release

    async def _adopt_local_places(self) -> None:
        """Add the places taken locally and still held to Redis, as leases renewed until they
        are given back: from now every process counts them. Those held through Redis are
        added again too, for a Redis that lost its data (or let them expire) meanwhile."""
        local = list(self._local_places.items())
        places = [*self._leases.items(), *local]
        if not places:
            return
        got = await self._run(
            "ADOPT",
            [key for _, key in places],
            [_ms(self.lease_seconds), *(lease_id for lease_id, _ in places)],
        )
        if got is _DOWN:
            return  # still local: added the next time Redis answers
        for lease_id, key in local:
            if self._local_places.pop(lease_id, None) is not None:
                self._leases[lease_id] = key
                self._adopted.add(lease_id)
        for lease_id, key in places:
            if lease_id not in self._leases and lease_id not in self._local_places:
                self._later(self._give_back(key, lease_id))  # given back meanwhile
        self._renew_while_held()

    def _releaser(self, lease_id: str, key: str) -> Release:
        def release() -> None:
            if self._leases.pop(lease_id, None) is None:
                return
            self._adopted.discard(lease_id)
            self._freed.set()
            self._freed = asyncio.Event()
            if self._status.shared:
                self._later(self._give_back(key, lease_id))
            else:  # removed once Redis answers again, not left to expire
                self._given_back[lease_id] = key

        return release

    async def _give_back(self, key: str, lease_id: str) -> None:
        try:
            await self._client_now().zrem(key, lease_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._given_back[lease_id] = key  # removed once Redis answers again
            self._lost(error)
        self._freed.set()
        self._freed = asyncio.Event()

    def _renew_while_held(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while self._leases or self._holds or self._probes:
            await asyncio.sleep(self.lease_seconds / 3)
            if self._probes:
                probes = list(self._probes.items())
                await self._run(
                    "RENEW_PROBES",
                    [key for _, key in probes],
                    [_ms(self.lease_seconds), *(token for token, _ in probes)],
                )
            keys: list[str] = []
            ids: list[str] = []
            for lease_id, key in list(self._leases.items()):
                keys.append(key)
                ids.append(lease_id)
            for hold_id, hold in list(self._holds.items()):
                _, holds, expiries = self._budget_keys(hold.purpose, hold.since)
                keys.extend((expiries, holds))
                ids.extend((hold_id, ""))
            if keys:
                await self._run("RENEW", keys, [_ms(self.lease_seconds), *ids])

    # Cool-downs

    def _cool_keys(self, model: str) -> list[str]:
        return [self._key("cool", model, part) for part in ("until", "streak", "probe")]

    def _ended_probes(self, model: str) -> None:
        """Stop renewing this process's probe of ``model``: it has ended."""
        key = self._cool_keys(model)[2]
        for token in [token for token, probed in self._probes.items() if probed == key]:
            del self._probes[token]

    async def cool_down(self, model: str, retry_after: float | None) -> CoolDown:
        """Start or extend ``model``'s cool-down for every process; end its probe."""
        self._ended_probes(model)
        got = await self._run(
            "COOL_DOWN",
            self._cool_keys(model),
            [
                -1 if retry_after is None else retry_after * 1000,
                FIRST_COOL_DOWN * 1000,
                LONGEST_COOL_DOWN * 1000,
                _ms(_STREAK_SECONDS),
            ],
        )
        if got is _DOWN:
            return await self.local.cool_down(model, retry_after)
        return CoolDown(float(got[1]) / 1000, int(got[0]) == 1)

    async def recovered(self, model: str) -> bool:
        """End ``model``'s rate limits in a row and its probe, for every process."""
        self._ended_probes(model)
        got = await self._run("RECOVERED", self._cool_keys(model)[1:], [])
        local = await self.local.recovered(model)
        return local if got is _DOWN else int(got) == 1 or local

    async def cooling(self, model: str) -> float:
        """Seconds until ``model`` may be tried again by any process (0: now)."""
        got = await self._run("COOLING", self._cool_keys(model), [FIRST_COOL_DOWN * 1000])
        if got is _DOWN:
            return await self.local.cooling(model)
        return float(got) / 1000

    async def claim(self, model: str) -> Claim:
        """Claim a try of ``model``; after rate limits, one try of all the processes probes."""
        token = uuid.uuid4().hex
        keys = self._cool_keys(model)
        got = await self._run(
            "CLAIM", keys, [FIRST_COOL_DOWN * 1000, token, _ms(self.lease_seconds)]
        )
        if got is _DOWN:
            return await self.local.claim(model)
        probe = int(got[0]) == 1
        if probe:  # renewed while its try runs: one whose process died ends with the lease
            self._probes[token] = keys[2]
            self._renew_while_held()
        return Claim(float(got[1]) / 1000, probe, token if probe else "", shared=True)

    async def hand_on(self, model: str, claim: Claim) -> None:
        """End ``claim``'s probe, where it was claimed."""
        if not claim.probe:
            return
        if not claim.shared:
            await self.local.hand_on(model, claim)
            return
        self._probes.pop(claim.token, None)
        await self._run("HAND_ON", self._cool_keys(model)[2:], [claim.token])

    # Budgets

    def _budget_keys(self, purpose: str, since: float) -> list[str]:
        return [self._key("budget", purpose, f"{since:.0f}", part) for part in _BUDGET_PARTS]

    async def reserve(
        self,
        purpose: str,
        since: float,
        usd: float,
        estimate: float,
        spent: float,
        reread: Callable[[], Awaitable[float]] | None = None,
    ) -> Hold | Refused:
        """Hold ``estimate`` while the period's shared spend and holds stay below ``usd``; a
        period Redis does not keep starts from ``await reread()`` if given, else ``spent``."""
        keys = self._budget_keys(purpose, since)
        hold_id = uuid.uuid4().hex

        async def attempt(spent: float, ask: bool) -> Any:
            args = [usd, estimate, hold_id, _ms(self.lease_seconds), spent, _ms(_PERIOD_SECONDS)]
            return await self._run("RESERVE", keys, [*args, "1" if ask else "0"])

        got = await attempt(spent, reread is not None)
        if got is not _DOWN and int(got[0]) == -1 and reread is not None:
            spent = await reread()
            got = await attempt(spent, False)
        if got is _DOWN:
            held = await self.local.reserve(purpose, since, usd, estimate, spent)
            if isinstance(held, Hold):
                self._local_holds[held.id] = held
            return held
        if not int(got[0]):
            return Refused(float(got[1]), float(got[2]))
        held = self._holds[hold_id] = Hold(purpose, since, estimate, hold_id, shared=True)
        self._renew_while_held()
        return held

    async def settle(
        self, purpose: str, since: float, cost: float, hold: Hold | None = None
    ) -> None:
        """Add ``cost`` to the period's shared spend, and release ``hold``."""
        if hold is not None and not hold.shared:
            await self.local.settle(purpose, since, cost, hold)
            if self._local_holds.pop(hold.id, None) is not None or hold.id not in self._holds:
                hold = None  # never added to Redis: nothing to release there
                if not cost:
                    return
        if hold is not None:
            self._holds.pop(hold.id, None)
        got = await self._run(
            "SETTLE",
            self._budget_keys(purpose, since),
            ["" if hold is None else hold.id, cost],
        )
        if got is _DOWN:
            if cost:
                key = (purpose, since)
                self._unsettled[key] = self._unsettled.get(key, 0.0) + cost
            if hold is not None:  # released there once Redis answers, not left to expire
                self._settled_meanwhile[hold.id] = hold

    async def _adopt_local_holds(self) -> None:
        """Add the budget holds taken locally and not settled yet to Redis, renewed until they
        are settled: from now every process counts them. Those held through Redis are added
        again too, for a Redis that lost its data (or let them expire) meanwhile."""
        local = list(self._local_holds.values())
        holds = [*self._holds.values(), *local]
        if not holds:
            return
        keys: list[str] = []
        args: list[object] = [_ms(self.lease_seconds)]
        for hold in holds:
            keys.extend(self._budget_keys(hold.purpose, hold.since)[1:])
            args.extend((hold.id, hold.usd))
        if await self._run("ADOPT_HOLDS", keys, args) is _DOWN:
            return  # still local: added the next time Redis answers
        for hold in local:
            if self._local_holds.pop(hold.id, None) is not None:
                self._holds[hold.id] = hold
        for hold in holds:
            if hold.id not in self._holds:  # settled meanwhile: its SETTLE may have gone first
                parts = self._budget_keys(hold.purpose, hold.since)
                self._later(self._run("SETTLE", parts, [hold.id, 0]))
        self._renew_while_held()

    async def _forget_given_back(self) -> None:
        """Remove from Redis the places given back and the holds settled while it failed (a
        Redis that kept its data still has them, until their leases expire)."""
        places, self._given_back = self._given_back, {}
        for lease_id, key in places.items():
            await self._give_back(key, lease_id)
        turns, self._turns_given_up = self._turns_given_up, {}
        for lease_id, waiters in turns.items():
            await self._run("GIVE_UP", waiters, [lease_id])
        holds, self._settled_meanwhile = self._settled_meanwhile, {}
        for hold in holds.values():
            await self._run("SETTLE", self._budget_keys(hold.purpose, hold.since), [hold.id, 0])

    async def _settle_unsettled(self) -> None:
        """Add the costs charged while Redis was down to the shared spend (a period whose
        spend Redis no longer keeps starts again from a ledger, which holds them)."""
        while self._unsettled:
            (purpose, since), cost = self._unsettled.popitem()
            got = await self._run("SETTLE", self._budget_keys(purpose, since), ["", cost])
            if got is _DOWN:  # down again: kept for the next time it answers
                key = (purpose, since)
                self._unsettled[key] = self._unsettled.get(key, 0.0) + cost
                return

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel listening, renewing and reconnecting at once; return the listening tasks
        (``close`` also waits for the writes under way and closes the client)."""
        listeners = self.stop_listening()
        for task in (self._renewing, self._reconnecting):
            if task is not None and not task.get_loop().is_closed():
                task.cancel()
        return listeners

    async def close(self) -> None:
        """Stop listening, renewing and reconnecting, finish the writes under way, close the
        client."""
        listeners = self.stop()
        running = asyncio.get_running_loop()
        mine = [task for task in listeners if task.get_loop() is running and not task.done()]
        if mine:
            await asyncio.wait(mine, timeout=_LISTEN_SECONDS + 2 * _COMMAND_SECONDS)
        await self.drain()
        if self._loop is not None and self._loop is asyncio.get_running_loop():
            await self._redis.aclose()

    # Messages between processes, and a look at Redis

    async def count(self, name: str) -> int | None:
        """Add one to the counter ``name`` every process shares; return its new value, or
        ``None`` while Redis cannot be reached (never raises)."""
        got = await self._ask(lambda client: client.incr(self._key(name)))
        return None if got is _DOWN else int(got)

    async def counted(self, name: str) -> int | None:
        """The counter ``name`` every process shares (0 before its first ``count``), or
        ``None`` while Redis cannot be reached (never raises)."""
        got = await self._ask(lambda client: client.get(self._key(name)))
        if got is _DOWN:
            return None
        return 0 if got is None else int(got)

    async def publish(self, channel: str, message: str) -> bool:
        """Send ``message`` to every process listening on ``channel``; return whether it went.

        Nothing is sent while Redis cannot be reached (``status``); a failure to send is noted
        as any other and never raised.
        """
        got = await self._ask(lambda client: client.publish(self._key(channel), message))
        return got is not _DOWN

    def listen(self, channel: str, heard: Heard) -> asyncio.Task[None]:
        """Call ``heard`` with every message any process publishes on ``channel``, from now
        until ``stop_listening`` or ``close``, in the running event loop; return its task.

        One task per channel and event loop: while one listens, calling again returns it (and
        ``heard`` stays the first one's). Once subscribed it calls ``heard(None)``: messages
        may have been missed before. While Redis cannot be reached the task waits; once it
        answers again it subscribes again, and calls ``heard(None)`` again. An exception of
        ``heard`` is logged, and the task goes on.
        """
        loop = asyncio.get_running_loop()
        task = self._listening.get(channel)
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._listening[channel] = loop.create_task(self._listen(channel, heard))
        return task

    def listening(self, channel: str) -> bool:
        """Whether a task listens on ``channel`` in the running event loop (``False`` when
        none is running)."""
        task = self._listening.get(channel)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return task is not None and not task.done() and task.get_loop() is loop

    def stop_listening(self) -> list[asyncio.Task[None]]:
        """Stop every listening task; return them. Each closes its connection as it ends,
        within ``_LISTEN_SECONDS`` (it is cancelled, and also sees that it was stopped)."""
        tasks = list(self._listening.values())
        self._listening.clear()
        for task in tasks:
            if not task.done() and not task.get_loop().is_closed():
                task.cancel()
        return tasks

    def _stopped(self, channel: str) -> bool:
        """Whether the listening task running this is no longer wanted: return ``True`` when
        ``stop_listening`` replaced it; raise ``CancelledError`` when it was cancelled, even
        if the cancellation was lost on the way."""
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        if cancelling is not None and cancelling():
            raise asyncio.CancelledError
        return self._listening.get(channel) is not task

    async def _listen(self, channel: str, heard: Heard) -> None:
        key = self._key(channel)
        missed = True  # a write may have come between the overrides' loading and now
        while not self._stopped(channel):
            if not self._status.shared:  # the reconnecting task pings meanwhile
                missed = True
                self._keep_reconnecting()
                await asyncio.sleep(min(self.retry_seconds, _LISTEN_SECONDS))
                continue
            client = _client(self.settings.redis, retries=False)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(key)
                if missed:
                    missed = False
                    await self._tell(heard, None)
                while not self._stopped(channel):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTEN_SECONDS
                    )
                    if message is not None and message.get("type") == "message":
                        await self._tell(heard, str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # ConnectionError, TimeoutError...
                if self._listening.get(channel) is asyncio.current_task():
                    self._lost(error)  # the status turns local: the loop above waits
                    missed = True
            finally:  # both, even when cancelled again meanwhile (the first cancel goes on)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pubsub.aclose()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await client.aclose()

    async def _tell(self, heard: Heard, message: str | None) -> None:
        try:
            await heard(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("datasette-llm: a listener of messages through Redis failed")

    async def ping(self, timeout: float = PING_SECONDS) -> str | None:
        """Ask Redis now whether it answers within ``timeout`` seconds: return why not, or
        ``None``. Changes nothing: not the status, nor where calls go (a look, for
        ``datasette llm check``)."""
        client = _client(self.settings.redis, retries=False)
        try:
            await asyncio.wait_for(client.ping(), timeout)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            return f"no answer within {timeout:g} s"
        except Exception as error:
            return problem_of(error, self.settings.redis)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
        return None


_BUDGET_PARTS: Final = ("spent", "holds", "expiries")


def _release_taken(taken: Release | None) -> None:
    if taken is not None:
        taken()


def _undo_result(undo: Callable[[_T], None], task: asyncio.Task[_T]) -> None:
    if not task.cancelled() and task.exception() is None:
        undo(task.result())


def _ms(seconds: float) -> int:
    """Whole milliseconds, as Redis's expiry options take them (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: object) -> str:
    """An argument as a script reads it: ``repr`` for a float (every digit kept)."""
    return repr(value) if isinstance(value, float) else str(value)
