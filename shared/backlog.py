"""The deployment-wide count of texts queued or being encoded: the API admits work against it, workers release it.

Past ``max_queued_texts`` new requests get 429 at once, so accepted work keeps its latency. A request larger than
the whole bound is still admitted when nothing else is queued, so no valid request is refused forever.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys

_ADMIT = """
local queued = tonumber(redis.call('GET', KEYS[1]) or '0')
local texts = tonumber(ARGV[1])
if queued > 0 and queued + texts > tonumber(ARGV[2]) then
    return -1
end
return redis.call('INCRBY', KEYS[1], texts)
"""

_RELEASE = """
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left < 0 then
    redis.call('SET', KEYS[1], 0)
end
return left
"""


class Backlog:
    def __init__(self, redis: Redis, limit: int) -> None:
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)
        self._limit = limit

    async def admit(self, texts: int) -> bool:
        """Count ``texts`` in, unless that would pass the bound."""
        return int(await self._admit(keys=[keys.QUEUED_TEXTS], args=[texts, self._limit])) >= 0

    async def release(self, texts: int) -> None:
        await self._release(keys=[keys.QUEUED_TEXTS], args=[texts])

    async def release_in(self, pipe: Pipeline, texts: int) -> None:
        """Queue the release in ``pipe``, to go with the result it belongs to."""
        await self._release(keys=[keys.QUEUED_TEXTS], args=[texts], client=pipe)
