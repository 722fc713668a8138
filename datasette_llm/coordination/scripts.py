"""The Lua scripts ``RedisCoordinator`` runs: each one step, atomic, on Redis's own clock.

Every script reads the time with ``redis.call('TIME')``, so the clocks of the processes never
matter, and works in milliseconds. A script that decides (may a request go, is there room in a
budget) checks and writes in one step, so two processes can never both take the last place.
Numbers with a fraction go back as text: Redis turns a Lua number into an integer.

Keys, each under the configured prefix (``P``):

- ``P:rpm:MODEL``: when the model's next request may leave (GCRA's theoretical arrival time);
  expires once that time has passed.
- ``P:leases:MODEL``: the places held under the model's ``concurrency``, a sorted set of lease
  ids scored by when each expires unless renewed.
- ``P:waiting:MODEL``, ``...:seen``: the callers of every process waiting for one of those
  places, by when each began to wait (a place goes to the one waiting longest), and by when
  each last asked (one that stopped asking is forgotten).
- ``P:cool:MODEL:until``, ``...:streak``, ``...:probe``: when the model's cool-down ends
  (expiring then), its rate limits in a row, and the try probing it once cooled.
- ``P:budget:PURPOSE:SINCE:spent``, ``...:holds``, ``...:expiries``: a budget's spend in the
  period starting ``SINCE``, the estimate of each prompt in flight (a hash by hold id), and when
  each hold expires unless renewed (a sorted set).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADOPT",
    "ADOPT_HOLDS",
    "CLAIM",
    "COOL_DOWN",
    "COOLING",
    "GIVE_UP",
    "HAND_ON",
    "LEASE",
    "PACE",
    "RECOVERED",
    "RENEW",
    "RENEW_PROBES",
    "RESERVE",
    "SETTLE",
]

_NOW: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
"""

PACE: Final = (
    _NOW
    + """
-- KEYS[1]: P:rpm:MODEL. ARGV[1]: ms between requests (60000 / rpm); ARGV[2]: the longest wait
-- in ms the caller accepts, or -1 for any; ARGV[3]: ms from now before which no turn may be
-- (one interval after the caller's process last took a turn, which may not be in Redis);
-- ARGV[4]: ms from now during which a turn is followed by ARGV[5] ms, not ARGV[1] (while other
-- processes may still send at their local share's pace, not counted here).
-- A request takes the next turn and waits until it: {1, wait ms}; when that is further away
-- than the caller accepts, it takes nothing: {0, wait ms}.
local interval = tonumber(ARGV[1])
local longest = tonumber(ARGV[2])
local turn = tonumber(redis.call('GET', KEYS[1]) or now)
local earliest = now + tonumber(ARGV[3])
if turn < earliest then turn = earliest end
local wait = turn - now
if longest >= 0 and wait > longest then
  return {0, tostring(wait)}
end
if turn < now + tonumber(ARGV[4]) then interval = tonumber(ARGV[5]) end
local after = turn + interval
redis.call('SET', KEYS[1], tostring(after), 'PX', math.ceil(after - now) + 1)
return {1, tostring(wait)}
"""
)

_KEEP_AT_LEAST: Final = """
local function keep_at_least(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

LEASE: Final = (
    _NOW
    + _KEEP_AT_LEAST
    + """
-- KEYS[1]: P:leases:MODEL; KEYS[2]: P:waiting:MODEL, the callers waiting for a place, by when
-- each began to wait; KEYS[3]: P:waiting:MODEL:seen, by when each last asked. ARGV[1]: the
-- places the caller may count on; ARGV[2]: the new lease's id (the caller's, while it waits);
-- ARGV[3]: its ms; ARGV[4]: ms after which a caller that has not asked again is forgotten;
-- ARGV[5]: '1' for a caller that waits, '0' for one that takes a place now or none (it comes
-- after every caller waiting, and takes no turn).
-- Places go to the callers in the order they began to wait, whatever their process:
-- 1: the lease is held (until renewed or released); 0: not yet (the caller keeps its turn).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local forget = tonumber(ARGV[4])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - forget)) do
  redis.call('ZREM', KEYS[2], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - forget)
local waits = ARGV[5] == '1'
local ahead = redis.call('ZCARD', KEYS[2])
if waits then
  redis.call('ZADD', KEYS[2], 'NX', now, ARGV[2])
  ahead = redis.call('ZRANK', KEYS[2], ARGV[2])
end
if redis.call('ZCARD', KEYS[1]) + ahead >= tonumber(ARGV[1]) then
  if waits then
    redis.call('ZADD', KEYS[3], now, ARGV[2])
    keep_at_least(KEYS[2], forget)
    keep_at_least(KEYS[3], forget)
  end
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
keep_at_least(KEYS[1], ttl)
return 1
"""
)

GIVE_UP: Final = """
-- KEYS: P:waiting:MODEL, P:waiting:MODEL:seen. ARGV[1]: the id of a caller that stopped
-- waiting for a place (out of time, or cancelled): the callers after it move up.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

ADOPT: Final = (
    _NOW
    + _KEEP_AT_LEAST
    + """
-- KEYS[i]: P:leases:MODEL of a place its process took while Redis failed, whose id is
-- ARGV[i + 1]; ARGV[1]: ms each lease has. The place is held already: it is added whatever the
-- limit, so every process counts it from now until it is given back or its lease expires.
local ttl = tonumber(ARGV[1])
for index, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + ttl, ARGV[index + 1])
  keep_at_least(key, ttl)
end
return #KEYS
"""
)

ADOPT_HOLDS: Final = (
    _NOW
    + _KEEP_AT_LEAST
    + """
-- KEYS[2i - 1], KEYS[2i]: P:budget:PURPOSE:SINCE:holds and :expiries of a budget hold its
-- process took while Redis failed; ARGV[1]: ms each hold lasts unless renewed; ARGV[2i],
-- ARGV[2i + 1]: its id and its estimate. The prompt is in flight already: its hold is added
-- whatever the budget's room, so every process counts it from now until it is settled.
local ttl = tonumber(ARGV[1])
for index = 1, #KEYS, 2 do
  local id = ARGV[index + 1]
  redis.call('HSET', KEYS[index], id, ARGV[index + 2])
  redis.call('ZADD', KEYS[index + 1], now + ttl, id)
  keep_at_least(KEYS[index], ttl)
  keep_at_least(KEYS[index + 1], ttl)
end
return #KEYS / 2
"""
)

RENEW: Final = (
    _NOW
    + _KEEP_AT_LEAST
    + """
-- KEYS[i]: the sorted set holding the id ARGV[i + 1] (a lease, or a budget hold's expiry),
-- or with an empty id a key only kept (a budget's holds); ARGV[1]: ms each has from now.
-- Returns how many ids were still held (one that expired meanwhile stays gone).
local ttl = tonumber(ARGV[1])
local held = 0
for index, key in ipairs(KEYS) do
  local id = ARGV[index + 1]
  if id ~= '' and redis.call('ZSCORE', key, id) then
    redis.call('ZADD', key, 'XX', now + ttl, id)
    held = held + 1
  end
  keep_at_least(key, ttl)
end
return held
"""
)

COOL_DOWN: Final = (
    _NOW
    + """
-- KEYS: P:cool:MODEL:until, :streak, :probe. ARGV[1]: the Retry-After in ms, or -1; ARGV[2]:
-- the first backoff ms; ARGV[3]: the longest backoff ms; ARGV[4]: ms the streak is kept.
-- Returns {rate limits in a row, the wait in ms this one asks}.
local streak = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local wait = tonumber(ARGV[1])
if wait < 0 then
  wait = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (streak - 1))
end
local ends = now + wait
local before = tonumber(redis.call('GET', KEYS[1]) or 0)
if before > ends then ends = before end
redis.call('SET', KEYS[1], tostring(ends), 'PX', math.max(1, math.ceil(ends - now)))
redis.call('DEL', KEYS[3])
return {streak, tostring(wait)}
"""
)

RECOVERED: Final = """
-- KEYS: P:cool:MODEL:streak, :probe. Returns 1 if the model had been rate limited.
local had = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return had
"""

COOLING: Final = (
    _NOW
    + """
-- KEYS: P:cool:MODEL:until, :streak, :probe. ARGV[1]: ms others wait while a probe is out.
-- Returns the ms until the model may be tried.
local ends = tonumber(redis.call('GET', KEYS[1]) or 0)
if ends > now then return tostring(ends - now) end
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('EXISTS', KEYS[3]) == 1 then
  return ARGV[1]
end
return '0'
"""
)

CLAIM: Final = (
    _NOW
    + """
-- KEYS: P:cool:MODEL:until, :streak, :probe. ARGV[1]: ms others wait while a probe is out;
-- ARGV[2]: this try's token; ARGV[3]: ms the probe is kept if its process never ends it.
-- Returns {1 if this try is the probe, the ms to wait (0: go)}.
local ends = tonumber(redis.call('GET', KEYS[1]) or 0)
if ends > now then return {0, tostring(ends - now)} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, '0'} end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then return {1, '0'} end
return {0, ARGV[1]}
"""
)

RENEW_PROBES: Final = """
-- KEYS[i]: P:cool:MODEL:probe; ARGV[1]: ms each has from now; ARGV[i + 1]: the token this
-- process claimed it with. Keeps each probe that is still that token's; returns how many.
local kept = 0
for index, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[index + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    kept = kept + 1
  end
end
return kept
"""

HAND_ON: Final = """
-- KEYS[1]: P:cool:MODEL:probe. ARGV[1]: the probe's token. Ends the probe if it is that one.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

RESERVE: Final = (
    _NOW
    + _KEEP_AT_LEAST
    + """
-- KEYS: P:budget:PURPOSE:SINCE:spent, :holds, :expiries. ARGV[1]: the budget's usd;
-- ARGV[2]: the estimate to hold; ARGV[3]: the hold's id; ARGV[4]: ms the hold lasts unless
-- renewed; ARGV[5]: the spend to start the period from, if it is new; ARGV[6]: ms the
-- period's keys are kept; ARGV[7]: '1' to be asked for that spend first (the caller's figure
-- may not count the other processes' rows: it reads the ledger again).
-- Returns {1 if held, spent, held before this one}, or {-1} when asked.
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
redis.call('SET', KEYS[1], ARGV[5], 'NX', 'PX', ARGV[6])
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local reserved = 0
for _, amount in ipairs(redis.call('HVALS', KEYS[2])) do
  reserved = reserved + tonumber(amount)
end
local spent = tonumber(redis.call('GET', KEYS[1]))
if spent + reserved >= tonumber(ARGV[1]) then
  return {0, tostring(spent), tostring(reserved)}
end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[3])
keep_at_least(KEYS[2], ttl)
keep_at_least(KEYS[3], ttl)
return {1, tostring(spent), tostring(reserved)}
"""
)

SETTLE: Final = """
-- KEYS: P:budget:PURPOSE:SINCE:spent, :holds, :expiries. ARGV[1]: the hold's id (empty:
-- none); ARGV[2]: the cost to add. A period whose spend is not kept (new, or lost with Redis's
-- data) is left to start from the ledger at its next hold.
if ARGV[1] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
end
return 1
"""
