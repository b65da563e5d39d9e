"""The result store's budget: every job, batch and upload reserves the bytes it will keep in Redis before it is
accepted, so a full Redis refuses new work clearly (507 ``insufficient_storage``) instead of losing accepted work.

- A job reserves its results (inputs x dimensions x 4 bytes of float32) and its queued inputs; a worker gives the
  inputs' share back when it stores a chunk (in the same script that stores it). A batch reserves the same for all
  its requests, an upload its bytes.
- A reservation lasts until its results expire (a sorted set by expiry, swept by every reservation) or they are
  deleted (``release``), so bytes come back without anyone watching Redis' expiries.
- The budget is ``STORE_BUDGET_BYTES``, or Redis' ``maxmemory`` less ``STORE_HEADROOM`` of it: the headroom holds
  what is not reserved (synchronous requests and replies, queue entries' own overhead, Redis itself), so a full
  budget never blocks synchronous requests. With neither a setting nor a ``maxmemory``, nothing is refused.

The count is kept atomically in Redis, deployment-wide, like the backlog bound (``shared.backlog``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.backlog import READ_COUNTER_LUA
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError

#: bytes Redis spends per stored value beyond its payload (key, expiry, allocator rounding), per chunk or record
RECORD_BYTES = 4096
#: bytes a queued input costs beyond its UTF-8 text (msgpack framing, the chunk's share of its arq entry)
INPUT_OVERHEAD_BYTES = 16
#: a float32 value
VALUE_BYTES = 4

# KEYS: total, reservations (hash id -> bytes), expiries (zset id -> ms). ARGV: id, bytes, expires (ms), budget
# (0: none), now (ms). Sweeps reservations whose results have expired, then adds ``bytes`` to ``id``'s reservation
# if the total stays within the budget. Returns {1 or 0 (refused), total after, budget}.
_RESERVE = (
    READ_COUNTER_LUA
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[5], 'LIMIT', 0, 256)
for _, id in ipairs(gone) do
    local held = tonumber(redis.call('HGET', KEYS[2], id) or '0')
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('DECRBY', KEYS[1], held)
end
local total = read_counter(KEYS[1])
local bytes = tonumber(ARGV[2])
local budget = tonumber(ARGV[4])
if budget > 0 and total + bytes > budget then
    return {0, total, budget}
end
redis.call('HINCRBY', KEYS[2], ARGV[1], bytes)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('INCRBY', KEYS[1], bytes)
return {1, total + bytes, budget}
"""
)

# KEYS: total, reservations, expiries. ARGV: id. Gives back what ``id`` holds.
_RELEASE = """
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held > 0 then
    redis.call('DECRBY', KEYS[1], held)
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return held
"""

#: Lua, for scripts that store results: give ``bytes`` of reservation ``id`` back, never below zero
RELEASE_PART_LUA = """
local function release_part(total_key, reservations_key, id, bytes)
    local held = tonumber(redis.call('HGET', reservations_key, id) or '0')
    local given = math.min(held, tonumber(bytes))
    if given > 0 then
        redis.call('HINCRBY', reservations_key, id, -given)
        redis.call('DECRBY', total_key, given)
    end
end
"""

RESERVATION_KEYS = [keys.STORE_RESERVED, keys.STORE_RESERVATIONS, keys.STORE_EXPIRIES]


def input_bytes(inputs: Sequence[Any]) -> int:
    """What queued inputs take in Redis: text as UTF-8, token ids as 4 bytes each, an image as its data URI or URL
    (``{"image": ...}``), plus framing."""
    total = 0
    for value in inputs:
        if isinstance(value, dict):
            value = next(iter(value.values()), "")
        total += (len(value.encode()) if isinstance(value, str) else VALUE_BYTES * len(value)) + INPUT_OVERHEAD_BYTES
    return total


def results_bytes(count: int, dimensions: int, chunks: int) -> int:
    """What ``count`` vectors of ``dimensions`` float32 values take, stored in ``chunks`` values."""
    return count * dimensions * VALUE_BYTES + chunks * RECORD_BYTES


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    reserved: int
    #: 0: no budget
    budget: int


def budget_bytes(setting: int, headroom: float, maxmemory: int) -> int:
    """The budget: the setting, or ``maxmemory`` less its headroom; 0 (none) when Redis has no cap either."""
    if setting:
        return setting
    return int(maxmemory * (1 - headroom)) if maxmemory else 0


class StorageBudget:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)

    async def reserve(self, owner_id: str, nbytes: int, expires_at_s: int, budget: int) -> None:
        """Hold ``nbytes`` for ``owner_id`` until ``expires_at_s``; ServiceError(INSUFFICIENT_STORAGE) if they do not
        fit in ``budget``."""
        admitted, total, _ = await self._reserve(
            keys=RESERVATION_KEYS, args=[owner_id, nbytes, expires_at_s * 1000, budget, now_ms()]
        )
        if not admitted:
            raise ServiceError(
                ErrorKind.INSUFFICIENT_STORAGE,
                f"the result store is full: this needs {_mb(nbytes)} and {_mb(max(0, budget - int(total)))} of "
                f"{_mb(budget)} are free; fetch or delete finished results, or retry once older results expire",
            )

    async def release(self, owner_id: str) -> None:
        await self._release(keys=RESERVATION_KEYS, args=[owner_id])

    async def usage(self, budget: int) -> Usage:
        reserved = await self._redis.get(keys.STORE_RESERVED)
        return Usage(max(0, int(reserved or 0)), budget)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"
