"""The deployment-wide count of texts queued or being encoded: the API admits work against it, workers release it.

Past ``max_queued_texts`` new requests get 429 at once, so accepted work keeps its latency. A request larger than
the whole bound is still admitted when nothing else is queued, so no valid request is refused forever.
Admission happens inside the enqueue script (``shared.arq_batch``), atomically with the enqueue itself.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys

_RELEASE = """
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left < 0 then
    redis.call('SET', KEYS[1], 0)
end
return left
"""


class Backlog:
    def __init__(self, redis: Redis, key: str = keys.QUEUED_TEXTS) -> None:
        self._release = redis.register_script(_RELEASE)
        self._key = key

    async def release(self, texts: int) -> None:
        await self._release(keys=[self._key], args=[texts])

    async def release_in(self, pipe: Pipeline, texts: int) -> None:
        """Queue the release in ``pipe``, to go with the result it belongs to."""
        await self._release(keys=[self._key], args=[texts], client=pipe)
