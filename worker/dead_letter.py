"""Queue entries no worker can read, moved aside with why, where an operator can look at them (``keys.DEAD_LETTER``)."""

from __future__ import annotations

import logging

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.clock import now_ms
from shared.errors import ProtocolError
from worker import metrics

log = logging.getLogger(__name__)

#: entries kept in the dead-letter list
DEAD_LETTER_CAP = 1000


class DeadLetters:
    def __init__(self, redis: Redis, worker_id: str) -> None:
        self._redis = redis
        self._worker_id = worker_id

    async def keep(self, queue_id: str, message: bytes, exc: ProtocolError) -> None:
        log.error("queue entry %s cannot be read (%s); moved to %s", queue_id, exc.message, keys.DEAD_LETTER)
        metrics.JOBS.labels("dead_letter").inc()
        entry = msgpack.packb(
            {"id": queue_id, "reason": exc.message, "worker": self._worker_id, "at_ms": now_ms(), "payload": message},
            use_bin_type=True,
        )
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(keys.DEAD_LETTER, entry)
                pipe.ltrim(keys.DEAD_LETTER, 0, DEAD_LETTER_CAP - 1)
                await pipe.execute()
        except (RedisError, OSError) as redis_error:
            log.warning("could not keep queue entry %s aside: %r", queue_id, redis_error)
