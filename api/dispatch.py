"""Enqueue an embedding job and wait for its result, within the request's deadline and the deployment's backlog."""

from __future__ import annotations

import asyncio
import contextlib
import time

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from api.results import ResultListener
from shared.arq_batch import ArqBatch, NewJob, job_id_for
from shared.coalesce import Coalescer
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedJob, EmbedResult, encode_job
from shared.workers import live_workers, now_ms

#: seconds a "some worker is alive" answer is reused
_LIVENESS_CACHE_S = 1.0
#: arq keeps a job's definition this long past its deadline, so a late worker still sees (and skips) it
_JOB_KEY_EXTRA_S = 3600


class Dispatcher:
    def __init__(
        self, redis: ArqRedis, listener: ResultListener, *, worker_ttl_s: float, max_queued_texts: int
    ) -> None:
        self._redis = redis
        self._listener = listener
        self._arq = ArqBatch.sync(redis)
        self._max_queued_texts = max_queued_texts
        self._enqueuer: Coalescer[NewJob, bool] = Coalescer(self._enqueue_many)
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
        new_job = NewJob(
            job_id=job_id_for(job.request_id, len(job.inputs)),
            message=encode_job(job),
            enqueued_ms=job.enqueued_ms,
            expires_ms=int((timeout_s + _JOB_KEY_EXTRA_S) * 1000),
            texts=len(job.inputs),
        )
        try:
            await self._require_workers()
            admitted = await self._enqueuer.submit(new_job)
        except (RedisError, OSError) as exc:
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly") from exc
        if not admitted:
            raise ServiceError(ErrorKind.RATE_LIMITED, "too much work is queued right now; retry shortly")

    async def _enqueue_many(self, jobs: list[NewJob]) -> list[bool]:
        """All the jobs submitted since the last flush, with one script call."""
        return await self._arq.enqueue(jobs, self._max_queued_texts, now_ms())

    async def _withdraw(self, job: EmbedJob) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._arq.withdraw([job_id_for(job.request_id, len(job.inputs))])

    async def _require_workers(self) -> None:
        now = time.monotonic()
        if now - self._workers_seen_at < _LIVENESS_CACHE_S:
            return
        if not await live_workers(self._redis, self._worker_ttl_s):
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "no embedding worker is running; retry shortly")
        self._workers_seen_at = now
