"""Enqueue an embedding job and wait for its result, within the request's deadline and the deployment's backlog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from api.results import ResultListener
from shared.arq_batch import ArqBatch, NewJob, job_id_for
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedJob, EmbedResult, encode_job
from shared.workers import live_workers, now_ms

log = logging.getLogger(__name__)

#: seconds a "some worker is alive" answer is reused
_LIVENESS_CACHE_S = 1.0
#: arq keeps a job's definition this long past its deadline, so a late worker still sees (and skips) it
_JOB_KEY_EXTRA_S = 3600


class Dispatcher:
    """Each request's job goes to Redis with every other job submitted in the same event-loop turn (one script
    call, which also admits them against the backlog bound); its result, or its refusal, or its timeout, comes
    back through one future: a request is resumed once, when it has its answer.
    """

    def __init__(
        self, redis: ArqRedis, listener: ResultListener, *, worker_ttl_s: float, max_queued_texts: int
    ) -> None:
        self._redis = redis
        self._listener = listener
        self._arq = ArqBatch.sync(redis)
        self._max_queued_texts = max_queued_texts
        self._to_enqueue: list[tuple[NewJob, asyncio.Future[EmbedResult]]] = []
        self._enqueuing: asyncio.Task[None] | None = None
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
        await self._require_workers()
        loop = asyncio.get_running_loop()
        future = self._listener.expect(job.request_id)
        self._to_enqueue.append((self._new_job(job, timeout_s), future))
        if self._enqueuing is None:
            self._enqueuing = loop.create_task(self._enqueue_waiting())
        timer = loop.call_later(timeout_s, _time_out, future, timeout_s)
        try:
            return await future
        except asyncio.CancelledError:
            await asyncio.shield(self._withdraw(job))
            raise
        except ServiceError as exc:
            if exc.kind is ErrorKind.TIMEOUT:
                await self._withdraw(job)
            raise
        finally:
            timer.cancel()
            self._listener.forget(job.request_id)

    @staticmethod
    def _new_job(job: EmbedJob, timeout_s: float) -> NewJob:
        return NewJob(
            job_id=job_id_for(job.request_id, len(job.inputs)),
            message=encode_job(job),
            enqueued_ms=job.enqueued_ms,
            expires_ms=int((timeout_s + _JOB_KEY_EXTRA_S) * 1000),
            texts=len(job.inputs),
        )

    async def _enqueue_waiting(self) -> None:
        """Enqueue what waits, one script call at a time, until nothing does; failures reach every job's future."""
        try:
            while self._to_enqueue:
                waiting, self._to_enqueue = self._to_enqueue, []
                live = [(new_job, future) for new_job, future in waiting if not future.done()]
                if live:
                    await self._enqueue_many(live)
        finally:
            self._enqueuing = None

    async def _enqueue_many(self, jobs: list[tuple[NewJob, asyncio.Future[EmbedResult]]]) -> None:
        refusals: list[Callable[[], ServiceError] | None]
        try:
            admitted = await self._arq.enqueue([new_job for new_job, _ in jobs], self._max_queued_texts, now_ms())
        except (RedisError, OSError) as exc:
            log.warning("enqueueing %d jobs failed: %r", len(jobs), exc)
            refusals = [_unreachable] * len(jobs)
        except Exception:
            log.exception("enqueueing %d jobs failed", len(jobs))
            refusals = [_enqueue_failed] * len(jobs)
        else:
            refusals = [None if ok else _backlog_full for ok in admitted]
        for (_, future), refusal in zip(jobs, refusals, strict=True):
            if refusal is not None and not future.done():
                future.set_exception(refusal())

    async def _withdraw(self, job: EmbedJob) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._arq.withdraw([job_id_for(job.request_id, len(job.inputs))])

    async def _require_workers(self) -> None:
        now = time.monotonic()
        if now - self._workers_seen_at < _LIVENESS_CACHE_S:
            return
        try:
            alive = await live_workers(self._redis, self._worker_ttl_s)
        except (RedisError, OSError) as exc:
            raise _unreachable() from exc
        if not alive:
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "no embedding worker is running; retry shortly")
        self._workers_seen_at = now


def _time_out(future: asyncio.Future[EmbedResult], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(ServiceError(ErrorKind.TIMEOUT, f"no result within {timeout_s:g}s; retry later"))


def _unreachable() -> ServiceError:
    return ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly")


def _backlog_full() -> ServiceError:
    return ServiceError(ErrorKind.RATE_LIMITED, "too much work is queued right now; retry shortly")


def _enqueue_failed() -> ServiceError:
    return ServiceError(ErrorKind.INTERNAL, "the request could not be queued")
