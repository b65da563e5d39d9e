"""Enqueue an embedding job and wait for its result, within the request's deadline."""

from __future__ import annotations

import asyncio
import time

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from api.results import ResultListener
from shared import keys
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedJob, EmbedResult, encode_job
from shared.queue import EMBED_FUNCTION
from shared.workers import live_workers

#: seconds a "some worker is alive" answer is reused
_LIVENESS_CACHE_S = 1.0


class Dispatcher:
    def __init__(self, redis: ArqRedis, listener: ResultListener, *, worker_ttl_s: float) -> None:
        self._redis = redis
        self._listener = listener
        self._worker_ttl_s = worker_ttl_s
        self._workers_seen_at = -_LIVENESS_CACHE_S

    @property
    def reply_key(self) -> str:
        return self._listener.reply_key

    async def run(self, job: EmbedJob, timeout_s: float) -> EmbedResult:
        """The worker's result for ``job``; ServiceError if it cannot be had in time."""
        future = self._listener.expect(job.request_id)
        try:
            try:
                await self._require_workers()
                await self._redis.enqueue_job(
                    EMBED_FUNCTION, encode_job(job), _job_id=job.request_id, _expires=timeout_s
                )
                await self._redis.publish(keys.WAKE_CHANNEL, b"")
            except (RedisError, OSError) as exc:
                raise ServiceError(
                    ErrorKind.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly"
                ) from exc
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise ServiceError(ErrorKind.TIMEOUT, f"no result within {timeout_s:g}s; retry later") from None
        finally:
            self._listener.forget(job.request_id)

    async def _require_workers(self) -> None:
        now = time.monotonic()
        if now - self._workers_seen_at < _LIVENESS_CACHE_S:
            return
        if not await live_workers(self._redis, self._worker_ttl_s):
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "no embedding worker is running; retry shortly")
        self._workers_seen_at = now
