"""Redis failing fails no prompt: each process keeps its share locally, logs it once, and
shares again once Redis answers."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import pytest
from datasette.utils import StartupError

from datasette_llm.config.values import CoordinationSettings
from datasette_llm.coordination import (
    INSTALL,
    Hold,
    LocalCoordinator,
    RedisCoordinator,
    RedisMissing,
    Refused,
    coordinator_for,
)
from tests.conftest import MakeDatasette
from tests.redis_server import RedisServer


def shared(coordinator: RedisCoordinator) -> bool:
    """Read afresh (mypy would otherwise take the status for the one asserted earlier)."""
    return coordinator.status.shared


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_while_redis_is_down_each_process_keeps_its_share_and_says_so_once(
    own_redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        assert await coordinator.pace("m", 6000.0, None)
        assert coordinator.status.shared
        own_redis_server.stop()
        # Every call still answers: the rpm and concurrency halved, cool-downs and holds local.
        assert await coordinator.pace("m", 6000.0, None)
        first = await coordinator.lease("m", 4, 0)
        second = await coordinator.lease("m", 4, 0)
        assert first is not None and second is not None
        assert await coordinator.lease("m", 4, 0.05) is None  # 4 / 2 processes
        assert (await coordinator.cool_down("m", 0.2)).first
        assert await coordinator.cooling("m") > 0
        assert not isinstance(await coordinator.reserve("p", 0.0, 1.0, 0.5, 0.0), type(None))
        status = coordinator.status
        assert not status.shared and status.problem
        assert status.where == own_redis_server.url
        [warning] = warnings(caplog)
        assert warning.startswith(f"datasette-llm: Redis at {own_redis_server.url} failed (")
        assert "keeps 1/2 of each model's rpm and concurrency" in warning
        first()
        second()

        own_redis_server.start()
        started = time.monotonic()
        while not shared(coordinator) and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        assert shared(coordinator)
        # A warning too, as the failure was: ``datasette serve`` shows no INFO line.
        back = f"datasette-llm: Redis at {own_redis_server.url} answers again after "
        assert [w for w in warnings(caplog) if w.startswith(back)]
        # Shared again: a cool-down one process starts is seen by another at once.
        other = RedisCoordinator(settings)
        await coordinator.cool_down("n", 5.0)
        assert await other.cooling("n") > 4
        await other.close()
        assert len(warnings(caplog)) == 2  # failed, answers again
    finally:
        await coordinator.close()


async def test_redis_unreachable_from_the_start_is_survivable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = CoordinationSettings("redis://127.0.0.1:1/0", processes=3)
    coordinator = RedisCoordinator(settings, retry_seconds=60)
    try:
        assert await coordinator.pace("m", 600.0, 1.0)
        assert await coordinator.lease("m", 3, 0) is not None
        assert await coordinator.lease("m", 3, 0.01) is None  # 3 / 3 processes
        assert len(warnings(caplog)) == 1
    finally:
        await coordinator.close()


def test_without_coordination_a_datasette_keeps_limits_locally(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette()
    local = coordinator_for(datasette, None)
    assert isinstance(local, LocalCoordinator)
    assert coordinator_for(datasette, None) is local
    assert not local.status.shared


def test_a_missing_redis_package_names_the_extra(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    settings = CoordinationSettings("redis://127.0.0.1:6379/0")
    with pytest.raises(RedisMissing) as raised:
        coordinator_for(make_datasette(), settings)
    assert INSTALL in str(raised.value)
    assert INSTALL == "pip install 'datasette-llm[redis]'"


async def test_costs_charged_while_redis_refused_are_added_once_it_answers_again(
    own_redis_server: RedisServer, prefix: str
) -> None:
    import redis.asyncio

    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    charging = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings)
    # The admin connection authenticates with the password before it is set (AUTH with no
    # password set is refused by Redis), so it keeps working while the others are refused.
    admin = redis.asyncio.Redis.from_url(own_redis_server.url)
    try:
        hold = await charging.reserve("p", 0.0, 10.0, 1.0, spent=0.0)  # the period starts at 0
        assert isinstance(hold, Hold)
        await admin.config_set("requirepass", "outage")
        await admin.client_kill_filter(_type="normal", skipme=True)
        await charging.settle("p", 0.0, 2.5, hold)  # Redis refuses: kept to be added later
        assert not shared(charging)
        await admin.config_set("requirepass", "")
        started = time.monotonic()
        while not shared(charging) and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        assert shared(charging)
        await charging.drain()
        refused = await other.reserve("p", 0.0, 2.0, 1.0, spent=0.0)
        assert isinstance(refused, Refused) and refused.spent == pytest.approx(2.5)
    finally:
        await admin.aclose()
        await charging.close()
        await other.close()


async def test_without_redis_py_startup_stops_naming_the_extra(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # as if redis-py were missing
    datasette = make_datasette({"coordination": {"redis": "redis://127.0.0.1:6379/0"}})
    with pytest.raises(StartupError) as raised:
        await datasette.invoke_startup()
    assert f"plugins.datasette-llm.coordination.redis: {RedisMissing()}" in str(raised.value)
    assert INSTALL in str(raised.value)


async def until_shared(coordinator: RedisCoordinator) -> None:
    """Wait until the coordinator has found Redis answering again (it pings every 0.1 s)."""
    await coordinator.cooling("m")  # a call: the coordinator notices Redis and pings it
    for _ in range(100):
        if shared(coordinator):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("Redis did not answer again within 5 s")


async def test_places_held_through_redis_when_it_fails_count_against_the_local_share(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``concurrency: 4`` over 2 processes: a process holding 2 places through Redis when it
    fails takes no local place until it has given them back: its share is 2 in all."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        first = await coordinator.lease("m", 4, 0)
        second = await coordinator.lease("m", 4, 0)
        assert first is not None and second is not None
        own_redis_server.stop()
        assert await coordinator.lease("m", 4, 0) is None  # goes local: 2 held already
        assert not shared(coordinator)
        assert await coordinator.lease("m", 4, 0.05) is None
        first()
        third = await coordinator.lease("m", 4, 0.5)
        assert third is not None
        assert await coordinator.lease("m", 4, 0.05) is None  # 1 through Redis, 1 local
        second()
        assert await coordinator.lease("m", 4, 0.5) is not None
        assert await coordinator.lease("m", 4, 0.05) is None
    finally:
        own_redis_server.start()
        await coordinator.close()


async def test_places_taken_locally_while_redis_failed_count_once_it_answers_again(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """Back on Redis, the places still held locally count against the shared limit until
    they are given back."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        local = [await coordinator.lease("m", 4, 0) for _ in range(2)]  # the share: 2 of 4
        assert None not in local and not shared(coordinator)
        own_redis_server.start()
        await until_shared(coordinator)
        # Once the other process may have noticed Redis answer too (the next test).
        taken = [await coordinator.lease("m", 4, 3) for _ in range(2)]
        assert None not in taken
        assert await coordinator.lease("m", 4, 0.05) is None  # 2 local + 2 through Redis
        release = local[0]
        assert release is not None
        release()
        assert await coordinator.lease("m", 4, 0.5) is not None
    finally:
        await coordinator.close()


async def test_turns_taken_through_redis_when_it_fails_go_before_the_local_ones(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``rpm: 120``: three requests take turns 0, 0.5 and 1 s from now through Redis, which
    then fails: the next request's local turn comes one interval after the last of them (at
    1.5 s), not at once."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        began = time.monotonic()
        queued = [asyncio.ensure_future(coordinator.pace("m", 120.0, None)) for _ in range(3)]
        await asyncio.sleep(0.1)  # each has its turn, the later ones sleeping until it
        own_redis_server.stop()
        assert not await coordinator.pace("m", 120.0, 0.3)  # the queue ends past 0.3 s
        assert await coordinator.pace("m", 120.0, None)
        assert time.monotonic() - began >= 1.5 - 0.01
        assert all(await asyncio.gather(*queued))
    finally:
        own_redis_server.start()
        await coordinator.close()


async def test_callers_waiting_for_a_local_turn_ask_redis_once_it_answers_again(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``rpm: 60`` over 2 processes: while Redis is down a process's turns leave every 2 s (its
    share). Once Redis answers, the callers still waiting take their turns through Redis, one
    a second after the last local one, so another process's turn comes after theirs; left
    local, they would leave at the local pace, unseen by the other processes."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    first = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        began = time.monotonic()
        assert await first.pace("m", 60.0, None)  # local: the first turn goes at once
        assert not shared(first)
        waiting = [asyncio.ensure_future(first.pace("m", 60.0, None)) for _ in range(3)]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in waiting)  # the next local turn is 2 s away
        own_redis_server.start()
        await until_shared(first)
        await asyncio.sleep(0.2)  # the waiting callers ask Redis: turns at 1, 2 and 3 s
        assert not await other.pace("m", 60.0, 0)  # the next turn is theirs' after: not now
        assert all(await asyncio.gather(*waiting))
        # Through Redis, one a second: by the local share's pace the last would leave at 6 s.
        assert time.monotonic() - began < 5.0
    finally:
        await first.close()
        await other.close()


async def test_places_taken_locally_are_counted_by_every_process_once_redis_answers_again(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``concurrency: 4`` over 2 processes. One takes its share, 2 places, while Redis is down,
    and a third caller of its waits. Once Redis answers, its 2 places are added to Redis and
    the caller waiting takes a place through Redis: the other process takes only the last
    one; as the first process gives its places back, the other may take them."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    first = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        local = [await first.lease("m", 4, 0) for _ in range(2)]
        assert None not in local and not shared(first)
        waiting = asyncio.ensure_future(first.lease("m", 4, None))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the local share is taken
        own_redis_server.start()
        await until_shared(first)
        third = await asyncio.wait_for(waiting, 5)  # through Redis now: 2 of 4 were free
        assert third is not None
        assert await other.lease("m", 4, 0) is not None
        assert await other.lease("m", 4, 0) is None  # 2 added from the first + 1 + 1
        release = local[0]
        assert release is not None
        release()  # given back through Redis
        assert await other.lease("m", 4, 1) is not None
        assert await other.lease("m", 4, 0) is None
        assert await first.lease("m", 4, 0) is None
    finally:
        await first.close()
        await other.close()


async def test_a_caller_cancelled_while_places_held_through_redis_are_counted_gives_back_its_own(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """While Redis is down, a local place waits until the places held through Redis fit the
    share; a caller cancelled meanwhile gives back the local place it had taken."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        held = [await coordinator.lease("m", 4, 0) for _ in range(2)]
        assert None not in held
        own_redis_server.stop()
        waiting = asyncio.ensure_future(coordinator.lease("m", 4, None))
        await asyncio.sleep(0.2)
        assert not waiting.done() and not shared(coordinator)
        assert coordinator.local.in_use("m", 4) == 1  # taken, waiting for the Redis ones
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert coordinator.local.in_use("m", 4) == 0
    finally:
        own_redis_server.start()
        await coordinator.close()


async def test_until_the_others_may_have_noticed_redis_answer_a_process_leaves_them_their_share(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``concurrency: 4`` over 2 processes. Back on Redis, the other process may still hold
    its local share, 2 places, unseen by Redis until it has noticed Redis answer (within its
    own next ping): until then this one takes no more than the 2 left, then all 4."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        assert await coordinator.cooling("m") == 0 and not shared(coordinator)
        own_redis_server.start()
        await until_shared(coordinator)
        began = time.monotonic()
        first = [await coordinator.lease("m", 4, 0) for _ in range(2)]
        assert None not in first
        assert await coordinator.lease("m", 4, 0) is None  # the other's share, maybe local
        more = [await coordinator.lease("m", 4, 5) for _ in range(2)]
        assert None not in more
        waited = time.monotonic() - began
        assert waited >= 0.5, waited  # a ping (0.1 s) and a connection's timeout (1 s)
        assert await coordinator.lease("m", 4, 0) is None  # 4 of 4
    finally:
        await coordinator.close()


async def test_until_the_others_may_have_noticed_redis_answer_turns_keep_to_the_share(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``rpm: 60`` over 2 processes: a turn a second, 2 s apart for each one's share. Back on
    Redis, while the other process may still send at its share's pace unseen, a turn taken
    holds the next 2 s off, for every process; once they have all noticed, 1 s."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        assert await coordinator.cooling("m") == 0 and not shared(coordinator)
        own_redis_server.start()
        await until_shared(coordinator)
        assert await coordinator.pace("m", 60.0, 0)
        assert not await other.pace("m", 60.0, 1.5)  # the next turn is 2 s away, not 1 s
        assert not await coordinator.pace("m", 60.0, 1.5)
        assert await other.pace("m", 60.0, 2.5)  # the turn at 2 s, past the 1.1 s of noticing
        assert await other.pace("m", 60.0, 1.5)  # the next, 1 s after it
    finally:
        await coordinator.close()
        await other.close()


async def test_budget_holds_taken_locally_are_counted_by_every_process_once_redis_answers_again(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """A budget of $1, estimates of $0.40. Two prompts of one process are admitted while Redis
    is down, holding $0.80 locally. Once Redis answers, their holds are added to it: another
    process admits one prompt more (overspend within one estimate), not three; a hold settled
    releases its estimate there and adds its cost."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    first = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        local = [await first.reserve("p", 0.0, 1.0, 0.4, spent=0.0) for _ in range(2)]
        assert all(isinstance(hold, Hold) and not hold.shared for hold in local)
        assert not shared(first)
        own_redis_server.start()
        await until_shared(first)
        assert isinstance(await other.reserve("p", 0.0, 1.0, 0.4, spent=0.0), Hold)
        refused = await other.reserve("p", 0.0, 1.0, 0.4, spent=0.0)
        assert isinstance(refused, Refused)
        assert refused.reserved == pytest.approx(1.2)  # 2 added from the first + 1
        settled = local[0]
        assert isinstance(settled, Hold)
        await first.settle("p", 0.0, 0.1, settled)
        room = await other.reserve("p", 0.0, 1.0, 0.4, spent=0.0)
        assert isinstance(room, Hold)  # spent 0.10 + held 0.80
    finally:
        await first.close()
        await other.close()


async def test_callers_waiting_beside_places_held_through_redis_take_each_one_given_back(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """``concurrency: 4`` over 2 processes, both places of the share held through Redis when it
    fails: two callers wait; once one of those places is given back, one of them goes on
    (counting the other caller, still waiting, kept both waiting until both were given back)."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    coordinator = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        held = [await coordinator.lease("m", 4, 0) for _ in range(2)]
        own_redis_server.stop()
        callers = [asyncio.ensure_future(coordinator.lease("m", 4, None)) for _ in range(2)]
        done, _ = await asyncio.wait(callers, timeout=0.5)
        assert not done and not shared(coordinator)
        first = held[0]
        assert first is not None
        first()  # one place held through Redis given back: one caller goes on
        done, waiting = await asyncio.wait(callers, timeout=2)
        assert len(done) == 1 and len(waiting) == 1
        second = held[1]
        assert second is not None
        second()
        assert await asyncio.wait_for(waiting.pop(), 2) is not None
    finally:
        own_redis_server.start()
        await coordinator.close()


async def test_places_and_holds_are_added_again_to_a_redis_that_lost_its_data(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """Redis restarted empty while a process held 2 places and a budget hold through it: once
    it answers, the process adds them again, so the other process counts them."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    first = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        held = [await first.lease("m", 2, 0) for _ in range(2)]
        assert None not in held
        hold = await first.reserve("p", 0.0, 1.0, 1.0, spent=0.0)
        assert isinstance(hold, Hold) and hold.shared
        own_redis_server.stop()  # it keeps nothing on disk: it starts again empty
        assert await first.cooling("m") == 0 and not shared(first)
        own_redis_server.start()
        await until_shared(first)
        await asyncio.sleep(1.2)  # past the time others may take to notice (not these)
        assert await other.lease("m", 2, 0) is None
        refused = await other.reserve("p", 0.0, 1.0, 0.5, spent=0.0)
        assert isinstance(refused, Refused) and refused.reserved == pytest.approx(1.0)
        release = held[0]
        assert release is not None
        release()
        assert await other.lease("m", 2, 1) is not None
    finally:
        await first.close()
        await other.close()


async def test_holds_two_processes_took_locally_are_all_counted_once_redis_answers_again(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """Each process's local holds keep ids of their own once added to Redis: two processes'
    two holds each are four there, not two overwritten by the other's."""
    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    first = RedisCoordinator(settings, retry_seconds=0.1)
    second = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    try:
        own_redis_server.stop()
        for coordinator in (first, second):
            for _ in range(2):
                assert isinstance(await coordinator.reserve("p", 0.0, 10.0, 1.0, 0.0), Hold)
            assert not shared(coordinator)
        own_redis_server.start()
        await until_shared(first)
        await until_shared(second)
        refused = await other.reserve("p", 0.0, 4.0, 1.0, spent=0.0)
        assert isinstance(refused, Refused) and refused.reserved == pytest.approx(4.0)
    finally:
        await first.close()
        await second.close()
        await other.close()


async def test_places_given_back_and_holds_settled_while_redis_failed_are_removed_from_it(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """A Redis that kept its data while it refused commands: the places given back and the
    holds settled meanwhile are removed once it answers, not left to hold others off until
    their leases expire."""
    import redis.asyncio

    settings = CoordinationSettings(own_redis_server.url, processes=2, prefix=prefix)
    first = RedisCoordinator(settings, retry_seconds=0.1)
    other = RedisCoordinator(settings, retry_seconds=0.1)
    admin = redis.asyncio.Redis.from_url(own_redis_server.url)  # see the test above
    try:
        places = [await first.lease("m", 2, 0) for _ in range(2)]
        hold = await first.reserve("p", 0.0, 1.0, 1.0, spent=0.0)
        assert isinstance(hold, Hold) and hold.shared
        await admin.config_set("requirepass", "outage")
        await admin.client_kill_filter(_type="normal", skipme=True)
        for release in places:
            assert release is not None
            release()
        await first.settle("p", 0.0, 0.0, hold)
        assert not shared(first)
        await admin.config_set("requirepass", "")
        await until_shared(first)
        await first.drain()
        assert await other.lease("m", 2, 0) is not None
        assert await other.lease("m", 2, 0) is not None
        assert isinstance(await other.reserve("p", 0.0, 1.0, 0.5, spent=0.0), Hold)
    finally:
        await admin.aclose()
        await first.close()
        await other.close()
