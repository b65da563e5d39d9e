"""The deployment-wide count of texts queued or being encoded: the API admits work against it, workers release it.

Past ``max_queued_texts`` new requests get 429 at once, so accepted work keeps its latency. A request larger than
the whole bound is still admitted when nothing else is queued, so no valid request is refused forever.
Admission happens inside the enqueue script (``shared.job_queue``), atomically with the enqueue itself; that script
also puts the count back to 0 if it went below (releases of work an emptied Redis no longer counted).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys

#: Lua: a counter's value, put back to 0 if releases took it below (work an emptied Redis no longer counted)
READ_COUNTER_LUA = """
local function read_counter(key)
    local value = tonumber(redis.call('GET', key) or '0')
    if value < 0 then
        redis.call('SET', key, 0)
        value = 0
    end
    return value
end
"""

# KEYS: the counter. ARGV: texts. Allowed past maxmemory (Redis 7's script flags): it grows nothing.
_RELEASE_PAST_MAXMEMORY = """#!lua flags=allow-oom
return redis.call('DECRBY', KEYS[1], ARGV[1])
"""


class Backlog:
    def __init__(self, redis: Redis, key: str = keys.QUEUED_TEXTS) -> None:
        self._redis = redis
        self._key = key
        self._release_past_maxmemory = redis.register_script(_RELEASE_PAST_MAXMEMORY)

    async def release(self, texts: int) -> None:
        await self._redis.decrby(self._key, texts)

    def release_in(self, pipe: Pipeline, texts: int) -> None:
        """Queue the release in ``pipe``, to go with the result it belongs to. A plain DECRBY, not a script: a
        pipeline holding a script asks Redis whether the script exists before every execute, one more round trip
        on every batch's finish."""
        pipe.decrby(self._key, texts)

    async def release_despite_oom(self, texts: int) -> None:
        """The release, when Redis refused it for want of memory (it refuses DECRBY then, though it grows nothing)."""
        await self._release_past_maxmemory(keys=[self._key], args=[texts])
