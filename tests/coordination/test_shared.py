"""What several ``RedisCoordinator``s naming one Redis share: each stands for one process."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from datasette_llm.config.values import CoordinationSettings
from datasette_llm.coordination import Hold, RedisCoordinator, Refused
from tests.redis_server import RedisServer

Processes = Callable[..., Awaitable[list[RedisCoordinator]]]


@pytest.fixture
async def processes(redis_server: RedisServer, prefix: str) -> AsyncIterator[Processes]:
    """Make coordinators sharing this test's keys; closed after the test."""
    made: list[RedisCoordinator] = []

    async def make(count: int = 3, **options: float) -> list[RedisCoordinator]:
        settings = CoordinationSettings(redis_server.url, processes=count, prefix=prefix)
        fresh = [RedisCoordinator(settings, **options) for _ in range(count)]
        made.extend(fresh)
        return fresh

    yield make
    for coordinator in made:
        await coordinator.close()


# rpm


async def test_requests_of_every_process_leave_one_interval_apart(processes: Processes) -> None:
    rpm = 1200.0  # one every 50 ms
    left: list[float] = []

    async def send(coordinator: RedisCoordinator) -> None:
        assert await coordinator.pace("m", rpm, None)
        left.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(send(c) for c in await processes(3) for _ in range(10)))
    left.sort()
    gaps = [later - earlier for earlier, later in itertools.pairwise(left)]
    assert min(gaps) > 0.05 - 0.005  # a sleep may end a little early, never a turn
    assert left[-1] - started < 29 * 0.05 + 0.3  # and no slower than the rpm allows
    for first in left:
        assert sum(1 for t in left if first <= t < first + 1.0) <= rpm / 60 + 1


async def test_a_turn_further_than_the_prompt_may_wait_is_not_taken(
    processes: Processes,
) -> None:
    first, second = await processes(2)
    assert await first.pace("m", 60.0, 0.0)  # one a second: the next turn is 1 s away
    assert not await second.pace("m", 60.0, 0.5)
    assert not await first.pace("m", 60.0, 0.5)  # the refusals took no turn
    started = time.monotonic()
    assert await second.pace("m", 60.0, 2.0)
    assert 0.4 < time.monotonic() - started < 1.1


# concurrency


async def test_places_are_shared_and_never_more_are_held_than_the_limit(
    processes: Processes,
) -> None:
    held = most = 0

    async def request(coordinator: RedisCoordinator) -> None:
        nonlocal held, most
        release = await coordinator.lease("m", 4, None)
        assert release is not None
        held += 1
        most = max(most, held)
        await asyncio.sleep(random.uniform(0.005, 0.03))
        held -= 1
        release()

    await asyncio.gather(*(request(c) for c in await processes(3) for _ in range(20)))
    assert most == 4


async def test_a_place_given_back_by_one_process_is_taken_by_another(
    processes: Processes,
) -> None:
    first, second, third = await processes(3)
    one, two = await first.lease("m", 2, 0), await second.lease("m", 2, 0)
    assert one is not None and two is not None
    assert await third.lease("m", 2, 0.1) is None
    waiting = asyncio.ensure_future(third.lease("m", 2, 2.0))
    await asyncio.sleep(0.05)
    one()
    one()  # a second release does nothing
    assert await waiting is not None


async def test_a_place_given_back_goes_to_the_caller_waiting_longest_whatever_its_process(
    processes: Processes,
) -> None:
    """The process giving a place back hears of it first, and its own callers ask at once
    while the others' poll: without a queue, its callers would take every place it gives back,
    and the other process's callers wait as long as it has callers of its own."""
    busy, other = await processes(2)
    held = [await busy.lease("m", 2, 0) for _ in range(2)]
    assert None not in held
    waiting_long = asyncio.ensure_future(other.lease("m", 2, None))
    await asyncio.sleep(0.3)  # the other process's caller waits first, polling
    waiting_since = asyncio.ensure_future(busy.lease("m", 2, None))
    await asyncio.sleep(0.05)
    first = held[0]
    assert first is not None
    first()
    done, _ = await asyncio.wait([waiting_long, waiting_since], timeout=2)
    assert done == {waiting_long}
    assert await busy.lease("m", 2, 0) is None  # within the limit: 1 + 1, and one waiting
    second = held[1]
    assert second is not None
    second()
    assert await asyncio.wait_for(waiting_since, 2) is not None


async def test_a_caller_that_stops_waiting_gives_up_its_turn(processes: Processes) -> None:
    first, second = await processes(2)
    held = await first.lease("m", 1, 0)
    assert held is not None
    assert await second.lease("m", 1, 0.2) is None  # waited, then gave up its turn
    cancelled = asyncio.ensure_future(second.lease("m", 1, None))
    await asyncio.sleep(0.1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await second.drain()
    held()
    await first.drain()  # given back through Redis
    # No turn is left ahead of a new caller: it takes the place at once.
    assert await first.lease("m", 1, 0) is not None


async def test_the_places_of_a_process_that_died_come_back_when_its_leases_expire(
    processes: Processes,
) -> None:
    (dying,) = await processes(1, lease_seconds=0.6)
    (survivor,) = await processes(1)
    assert await dying.lease("m", 1, 0) is not None
    await dying.close()  # no renewal, no release: as if the process were killed
    started = time.monotonic()
    assert await survivor.lease("m", 1, 2.0) is not None
    assert 0.3 < time.monotonic() - started < 1.0


async def test_a_place_held_longer_than_its_lease_is_renewed(processes: Processes) -> None:
    (holder,) = await processes(1, lease_seconds=0.3)
    (other,) = await processes(1)
    release = await holder.lease("m", 1, 0)
    assert release is not None
    assert await other.lease("m", 1, 1.0) is None  # three leases' length: renewed meanwhile
    release()
    assert await other.lease("m", 1, 1.0) is not None


# cool-downs


async def test_a_cool_down_started_by_one_process_holds_for_every_process(
    processes: Processes,
) -> None:
    first, second, third = await processes(3)
    started = await first.cool_down("m", 0.4)
    assert (started.wait, started.first) == (0.4, True)
    assert not (await second.cool_down("m", 0.1)).first  # still the same rate limits in a row
    assert 0.3 < await second.cooling("m") <= 0.4
    assert (await third.claim("m")).wait > 0.3
    await asyncio.sleep(0.45)
    probe = await second.claim("m")
    assert (probe.wait, probe.probe) == (0.0, True)
    waiting = await third.claim("m")
    assert (waiting.wait, waiting.probe) == (1.0, False)  # while the probe is out
    assert await third.cooling("m") == 1.0
    assert await second.recovered("m")
    assert (await third.claim("m")).wait == 0.0
    assert not (await third.claim("m")).probe  # not rate limited any more: no probe
    assert not await first.recovered("m")


async def test_a_probe_handed_on_lets_another_process_probe(processes: Processes) -> None:
    first, second = await processes(2)
    await first.cool_down("m", 0.01)
    await asyncio.sleep(0.02)
    probe = await first.claim("m")
    assert probe.probe
    assert not (await second.claim("m")).probe
    await first.hand_on("m", probe)
    assert (await second.claim("m")).probe


async def test_the_probe_of_a_process_that_died_ends_when_its_lease_expires(
    processes: Processes,
) -> None:
    (dying,) = await processes(1, lease_seconds=0.6)
    (survivor,) = await processes(1)
    await dying.cool_down("m", 0.01)
    await asyncio.sleep(0.02)
    assert (await dying.claim("m")).probe
    await dying.close()  # no renewal, no hand-on: as if the process were killed mid-probe
    assert not (await survivor.claim("m")).probe  # it is out
    await asyncio.sleep(0.8)
    assert (await survivor.claim("m")).probe  # not a minute later: with the lease


async def test_a_probe_under_way_longer_than_its_lease_is_renewed(processes: Processes) -> None:
    (prober,) = await processes(1, lease_seconds=0.3)
    (other,) = await processes(1)
    await prober.cool_down("m", 0.01)
    await asyncio.sleep(0.02)
    probe = await prober.claim("m")
    assert probe.probe
    await asyncio.sleep(1.0)  # three leases' length: renewed meanwhile
    assert not (await other.claim("m")).probe
    await prober.hand_on("m", probe)
    assert (await other.claim("m")).probe


async def test_without_retry_after_the_cool_down_doubles_with_each_rate_limit(
    processes: Processes,
) -> None:
    first, second = await processes(2)
    waits = [(await first.cool_down("m", None)).wait, (await second.cool_down("m", None)).wait]
    waits.append((await first.cool_down("m", None)).wait)
    assert waits == [1.0, 2.0, 4.0]


# budgets


async def test_holds_across_processes_never_pass_the_budget_by_more_than_one_estimate(
    processes: Processes,
) -> None:
    usd, estimate = 1.0, 0.1  # a budget worth ten prompts
    coordinators = await processes(3)
    answered = 0

    async def prompt(coordinator: RedisCoordinator) -> None:
        nonlocal answered
        hold = await coordinator.reserve("p", 0.0, usd, estimate, spent=0.0)
        if isinstance(hold, Refused):
            return
        await asyncio.sleep(random.uniform(0, 0.02))
        answered += 1
        await coordinator.settle("p", 0.0, random.uniform(0.5, 1.0) * estimate, hold)

    await asyncio.gather(*(prompt(coordinators[i % 3]) for i in range(150)))
    final = await coordinators[0].reserve("p", 0.0, usd, estimate, spent=0.0)
    assert isinstance(final, Refused) or final.usd == estimate
    if isinstance(final, Hold):
        await coordinators[0].settle("p", 0.0, 0.0, final)
    spent = (await coordinators[1].reserve("p", 0.0, 0.0, estimate, 0.0)).spent  # type: ignore[union-attr]
    assert spent <= usd + estimate
    assert answered >= 10


async def test_a_new_period_starts_from_the_first_ledger_to_meet_it(processes: Processes) -> None:
    first, second = await processes(2)
    hold = await first.reserve("p", 100.0, 4.5, 1.0, spent=3.5)
    assert isinstance(hold, Hold)
    refused = await second.reserve("p", 100.0, 4.5, 1.0, spent=0.0)  # its ledger knows less
    assert refused == Refused(spent=3.5, reserved=1.0)
    await first.settle("p", 100.0, 0.25, hold)
    assert await second.reserve("p", 100.0, 3.0, 1.0, spent=0.0) == Refused(3.75, 0.0)


async def test_the_holds_of_a_process_that_died_expire(processes: Processes) -> None:
    (dying,) = await processes(1, lease_seconds=0.5)
    (survivor,) = await processes(1)
    assert isinstance(await dying.reserve("p", 0.0, 1.0, 1.0, 0.0), Hold)
    await dying.close()
    assert isinstance(await survivor.reserve("p", 0.0, 1.0, 1.0, 0.0), Refused)
    await asyncio.sleep(0.6)
    assert isinstance(await survivor.reserve("p", 0.0, 1.0, 1.0, 0.0), Hold)
