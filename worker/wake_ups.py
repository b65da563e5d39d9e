"""Wake-up calls: the API publishes the name of the queue it just filled; an idle worker sleeps until one comes.

A worker looks at the chunk queue only when it was told that queue got work, when one of its chunks finished,
or when ``IDLE_POLL_S`` has passed (a dead worker's chunks come back without a message): asynchronous jobs are
rare next to synchronous requests, and each look is a Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys

log = logging.getLogger(__name__)

#: longest a worker goes without looking at its queues, in case a wake-up message was missed
IDLE_POLL_S = 1.0

_CHUNK_QUEUE = keys.CHUNK_QUEUE.encode()


class WakeUps:
    def __init__(self) -> None:
        #: set when any queue may hold work the worker has not seen
        self.event = asyncio.Event()
        self._chunks_hinted = True
        self._chunks_looked_at = float("-inf")

    def heard(self, queue: bytes) -> None:
        if queue == _CHUNK_QUEUE:
            self._chunks_hinted = True
        self.event.set()

    def chunks_may_wait(self) -> None:
        """Something other than a message says the chunk queue is worth a look (a chunk finished)."""
        self._chunks_hinted = True
        self.event.set()

    def look_at_chunks(self) -> bool:
        """Whether to claim chunks now; call before reading the queue, so a message that comes meanwhile counts."""
        now = asyncio.get_running_loop().time()
        if self._chunks_hinted or now - self._chunks_looked_at >= IDLE_POLL_S:
            self._chunks_hinted = False
            self._chunks_looked_at = now
            return True
        return False

    async def listen(self, redis: Redis) -> None:
        """Follow the wake-up channel for ever, resubscribing after Redis errors."""
        while True:
            try:
                async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.WAKE_CHANNEL)
                    self.chunks_may_wait()  # anything enqueued while we were not listening
                    while True:
                        message = await pubsub.get_message(timeout=IDLE_POLL_S)
                        if message is not None:
                            self.heard(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("wake-up subscription lost (%r); reconnecting", exc)
                await asyncio.sleep(0.5)
