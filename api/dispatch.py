"""Enqueue an embedding job and wait for its result, within the request's deadline and the deployment's backlog."""

from __future__ import annotations

import asyncio
import contextlib
import time

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from redis.exceptions import RedisError

from api.results import ResultListener
from shared import keys
from shared.backlog import Backlog
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedJob, EmbedResult, encode_job
from shared.queue import EMBED_FUNCTION
from shared.workers import live_workers

#: seconds a "some worker is alive" answer is reused
_LIVENESS_CACHE_S = 1.0
#: arq keeps a job's definition this long past its deadline, so a late worker still sees (and skips) it
_JOB_KEY_EXTRA_S = 3600


class Dispatcher:
    def __init__(self, redis: ArqRedis, listener: ResultListener, backlog: Backlog, *, worker_ttl_s: float) -> None:
        self._redis = redis
        self._listener = listener
        self._backlog = backlog
        self._worker_ttl_s = worker_ttl_s
        self._workers_seen_at = -_LIVENESS_CACHE_S

    @property
    def reply_key(self) -> str:
        return self._listener.reply_key

    async def run(self, job: EmbedJob, timeout_s: float) -> EmbedResult:
        """The worker's result for ``job``; ServiceError if it cannot be had in time.

        If the caller is cancelled (its client went away) or the deadline passes, a job no worker has started
        yet is taken off the queue.
        """
        future = self._listener.expect(job.request_id)
        try:
            await self._enqueue(job, timeout_s)
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                await self._withdraw(job)
                raise ServiceError(ErrorKind.TIMEOUT, f"no result within {timeout_s:g}s; retry later") from None
            except asyncio.CancelledError:
                await asyncio.shield(self._withdraw(job))
                raise
        finally:
            self._listener.forget(job.request_id)

    async def _enqueue(self, job: EmbedJob, timeout_s: float) -> None:
        try:
            await self._require_workers()
            if not await self._backlog.admit(len(job.inputs)):
                raise ServiceError(ErrorKind.RATE_LIMITED, "too much work is queued right now; retry shortly")
            await self._redis.enqueue_job(
                EMBED_FUNCTION, encode_job(job), _job_id=job.request_id, _expires=timeout_s + _JOB_KEY_EXTRA_S
            )
            await self._redis.publish(keys.WAKE_CHANNEL, b"")
        except (RedisError, OSError) as exc:
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly") from exc

    async def _withdraw(self, job: EmbedJob) -> None:
        with contextlib.suppress(RedisError, OSError):
            if await self._redis.zrem(keys.SYNC_QUEUE, job.request_id):
                await self._redis.delete(job_key_prefix + job.request_id)
                await self._backlog.release(len(job.inputs))

    async def _require_workers(self) -> None:
        now = time.monotonic()
        if now - self._workers_seen_at < _LIVENESS_CACHE_S:
            return
        if not await live_workers(self._redis, self._worker_ttl_s):
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "no embedding worker is running; retry shortly")
        self._workers_seen_at = now
