"""Which life of Redis a job was written in, so work Redis lost is told apart from work still on its way.

Redis without persistence (or past its last fsync) comes back from a restart empty. ``keys.EPOCH`` holds a random
id and the time it was made; whoever first touches an empty Redis (the enqueue script, or the API's reply reader
checking) creates it. So:

- a synchronous request whose job was written in an older epoch than the current one was lost with it: a
  retryable 503 at once (``api.results``), while requests written in the current epoch wait for their reply;
- a job id made before the current epoch began, whose record is gone, was lost (410), not mistyped (404).
"""

from __future__ import annotations

import dataclasses
import secrets

from redis.asyncio import Redis

from shared import keys
from shared.clock import now_ms

#: Lua: ``current_epoch(key, candidate id, now ms)``, the epoch's id, made from the candidate if there is none
CURRENT_EPOCH_LUA = """
local function current_epoch(key, candidate, now)
    if redis.call('HSETNX', key, 'id', candidate) == 1 then
        redis.call('HSET', key, 'started_ms', now)
    end
    return redis.call('HGET', key, 'id')
end
"""

_CURRENT = (
    CURRENT_EPOCH_LUA
    + """
local id = current_epoch(KEYS[1], ARGV[1], ARGV[2])
return {id, redis.call('HGET', KEYS[1], 'started_ms')}
"""
)


@dataclasses.dataclass(frozen=True, slots=True)
class Epoch:
    id: str
    started_ms: int


def candidate_id() -> str:
    return secrets.token_hex(8)


class Epochs:
    def __init__(self, redis: Redis) -> None:
        self._current = redis.register_script(_CURRENT)

    async def current(self) -> Epoch:
        epoch_id, started_ms = await self._current(keys=[keys.EPOCH], args=[candidate_id(), now_ms()])
        return Epoch(epoch_id.decode(), int(started_ms))
