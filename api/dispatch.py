"""Enqueue a synchronous job and wait for its reply, within the request's deadline, the deployment's backlog and its
API key's share of it.

The requests one enqueue round writes share queue entries: one entry for an owner's requests of the round, up to
``ENTRY_TEXTS`` texts and never more than the backlog bound or a key's share (``shared.job_queue``). The backlog and
the owner's share admit an entry as a whole; one they refuse is split, and its requests go again in the next round
each in an entry of its own, so each is admitted or refused as it would be alone. An entry is withdrawn when no
request in it still waits (a request that leaves while others of its entry wait lets its part run, and its reply
is dropped). A request that leaves before its entry is written is not counted among those waiting, and an entry
written for none is withdrawn at once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Protocol

from arq.connections import ArqRedis
from redis.exceptions import OutOfMemoryError, RedisError

from api.auth import ANONYMOUS
from api.replies import ReplyReader
from shared import tracing
from shared.clock import now_ms
from shared.coalesce import Coalescer
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import JobQueue, NewJob
from shared.protocol import DecodeTask, EmbedTask, RerankTask, TaskReply, TokenEmbedTask, TokenizeTask, encode_job
from shared.queue_format import queue_job_id
from shared.redis_memory import EvictionGuard, read_memory_info
from shared.workers import live_workers

log = logging.getLogger(__name__)

#: seconds a "some worker is alive" answer is reused
_LIVENESS_CACHE_S = 1.0
#: arq keeps a job's definition this long past its deadline, so a late worker still sees (and skips) it
_JOB_KEY_EXTRA_S = 3600
#: the most texts one queue entry carries, of requests that share it; a larger request has an entry of its own
ENTRY_TEXTS = 64


class JobBuilder(Protocol):
    """A request's job, once the dispatcher says where to answer it and by when."""

    def __call__(
        self, *, reply_to: str, enqueued_ms: int, deadline_ms: int
    ) -> EmbedTask | RerankTask | TokenizeTask | DecodeTask | TokenEmbedTask: ...


@dataclasses.dataclass(slots=True)
class _Entry:
    """A queue entry the requests of one round share, and how many of them still wait for their replies."""

    job: NewJob
    waiting: int = 0


@dataclasses.dataclass(slots=True)
class _Pending:
    """A request's job on its way to the next enqueue, then the entry that carries it."""

    request_id: str
    owner: str
    message: bytes
    texts: int
    enqueued_ms: int
    entry: _Entry | None = None
    #: in an entry of its own: the entry it shared was refused
    alone: bool = False


class Dispatcher:
    """Each request's job goes to Redis with every other job submitted while the previous enqueue was on its way
    (one script call, which also admits them against the backlog bound and each one's owner against its share,
    ``shared.backlog``); its reply, or its refusal, or its timeout, comes back through one future: a request is
    resumed once, when it has its answer.
    """

    def __init__(
        self,
        redis: ArqRedis,
        listener: ReplyReader,
        guard: EvictionGuard,
        *,
        worker_ttl_s: float,
        max_queued_texts: int,
        max_queued_texts_per_key: int,
        request_timeout_s: float,
    ) -> None:
        self._redis = redis
        self._listener = listener
        self._guard = guard
        self._queue = JobQueue.sync(redis)
        self._max_queued_texts = max_queued_texts
        self._max_queued_texts_per_key = max_queued_texts_per_key
        self._enqueuer: Coalescer[_Pending, TaskReply] = Coalescer(self._enqueue_many, "enqueue")
        #: texts an entry of several requests may carry: within the bounds, so only a lone request ever exceeds one
        self._entry_texts = min(ENTRY_TEXTS, max_queued_texts, max_queued_texts_per_key or ENTRY_TEXTS)
        self._worker_ttl_s = worker_ttl_s
        self._timeout_s = request_timeout_s
        self._workers_seen_at = -_LIVENESS_CACHE_S

    async def run(self, build: JobBuilder, owner: str) -> TaskReply:
        """The worker's reply to the request, within the deployment's request timeout; ServiceError if it cannot be
        had in time. ``owner``: who sent it (``api.auth``), whose share of the backlog its texts count against.

        If the caller is cancelled (its client went away) or the deadline passes, a job no worker has started
        yet is taken off the queue.
        """
        try:
            await self._guard.check()
        except (RedisError, OSError) as exc:
            raise _unreachable() from exc
        await self._require_workers()
        enqueued_ms = now_ms()
        timeout_s = self._timeout_s
        job = build(
            reply_to=self._listener.reply_key,
            enqueued_ms=enqueued_ms,
            deadline_ms=enqueued_ms + int(timeout_s * 1000),
        )
        trace_context = tracing.inject()
        if trace_context is not None:
            job = dataclasses.replace(job, trace_context=trace_context)
        pending = _Pending(job.request_id, owner, encode_job(job), len(job.inputs), enqueued_ms)
        future = self._enqueuer.add(pending, self._listener.expect(job.request_id))
        timer = asyncio.get_running_loop().call_later(timeout_s, _time_out, future, timeout_s)
        try:
            return await future
        except asyncio.CancelledError:
            await asyncio.shield(self._withdraw(pending))
            raise
        except ServiceError as exc:
            if exc.kind is ErrorKind.TIMEOUT:
                await self._withdraw(pending)
            raise
        finally:
            timer.cancel()
            self._listener.forget(job.request_id)
            self._leave(pending)

    def _entries(self, jobs: list[tuple[_Pending, asyncio.Future[TaskReply]]]) -> list[tuple[_Entry, list[int]]]:
        """The round's queue entries, each with the indexes of its requests in ``jobs``: an owner's requests, in
        order, up to ``ENTRY_TEXTS`` texts an entry."""
        entries: list[tuple[_Entry, list[int]]] = []
        open_entries: dict[str, tuple[list[int], int]] = {}
        groups: list[list[int]] = []
        for index, (pending, _) in enumerate(jobs):
            if pending.alone:
                groups.append([index])
                continue
            members, texts = open_entries.get(pending.owner, ([], 0))
            if members and texts + pending.texts > self._entry_texts:
                members, texts = [], 0
            if not members:
                groups.append(members)
            members.append(index)
            open_entries[pending.owner] = (members, texts + pending.texts)
        expires_ms = int((self._timeout_s + _JOB_KEY_EXTRA_S) * 1000)
        for members in groups:
            first = jobs[members[0]][0]
            texts = sum(jobs[index][0].texts for index in members)
            job = NewJob(
                job_id=queue_job_id(first.request_id, texts, first.owner),
                messages=tuple(jobs[index][0].message for index in members),
                enqueued_ms=first.enqueued_ms,
                expires_ms=expires_ms,
                texts=texts,
            )
            entries.append((_Entry(job), members))
        return entries

    async def _enqueue_many(self, jobs: list[tuple[_Pending, asyncio.Future[TaskReply]]]) -> None:
        """Enqueue in one script call; a refusal (backlog or the key's share full, Redis unreachable) completes the
        futures of the requests of the entry it refused. An admitted request's future is completed by the result
        listener, or by its timer."""
        entries = self._entries(jobs)
        refusals: list[Callable[[], ServiceError] | None]
        #: entries written for requests that all left while the script was on its way
        unwaited: list[str] = []
        try:
            new_jobs = [entry.job for entry, _ in entries]
            share = self._max_queued_texts_per_key
            enqueued = await self._queue.enqueue(new_jobs, self._max_queued_texts, now_ms(), per_key_limit=share)
        except OutOfMemoryError:
            log.warning("enqueueing %d jobs failed: Redis is out of memory", len(jobs))
            refusals = [_store_full] * len(entries)
        except (RedisError, OSError) as exc:
            log.warning("enqueueing %d jobs failed: %r", len(jobs), exc)
            refusals = [_unreachable] * len(entries)
        except Exception:
            log.exception("enqueueing %d jobs failed", len(jobs))
            refusals = [_enqueue_failed] * len(entries)
        else:
            refusals = []
            for (entry, members), ok, held in zip(entries, enqueued.admitted, enqueued.owner_holds, strict=True):
                if ok:
                    for index in members:
                        pending, future = jobs[index]
                        if future.done():  # its caller left (or its deadline passed) while the script ran
                            continue
                        pending.entry = entry
                        entry.waiting += 1
                        self._listener.written(pending.request_id, enqueued.epoch, entry.job.job_id)
                    if not entry.waiting:
                        unwaited.append(entry.job.job_id)
                    refusals.append(None)
                elif len(members) > 1:  # each request again, alone, in the next round
                    for index in members:
                        pending, future = jobs[index]
                        pending.alone = True
                        self._enqueuer.add(pending, future)
                    refusals.append(None)
                elif held:
                    owner = jobs[members[0]][0].owner
                    refusals.append(functools.partial(_key_backlog_full, owner, held, share))
                else:
                    refusals.append(_backlog_full)
        for (_, members), refusal in zip(entries, refusals, strict=True):
            for index in members:
                future = jobs[index][1]
                if refusal is not None and not future.done():
                    future.set_exception(refusal())
        if unwaited:
            with contextlib.suppress(RedisError, OSError):
                await self._queue.withdraw(unwaited)

    async def _withdraw(self, pending: _Pending) -> None:
        """Take the request's entry off the queue if no worker holds it and no other request in it still waits."""
        entry = self._leave(pending)
        if entry is None or entry.waiting > 0:  # not written (yet), or others of its entry still wait
            return
        with contextlib.suppress(RedisError, OSError):
            await self._queue.withdraw([entry.job.job_id])

    @staticmethod
    def _leave(pending: _Pending) -> _Entry | None:
        """The request no longer waits: its entry (None if it was not written), counting one fewer waiting. Counted
        once, whichever way it leaves (answered, refused, timed out, cancelled)."""
        entry, pending.entry = pending.entry, None
        if entry is not None:
            entry.waiting -= 1
        return entry

    async def _require_workers(self) -> None:
        now = time.monotonic()
        if now - self._workers_seen_at < _LIVENESS_CACHE_S:
            return
        try:
            alive = await live_workers(self._redis, self._worker_ttl_s)
        except (RedisError, OSError) as exc:
            raise _unreachable() from exc
        if not alive:
            if await _redis_full(self._redis):  # workers cannot write their heartbeats into a full Redis
                raise _store_full()
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "no embedding worker is running; retry shortly")
        self._workers_seen_at = now


async def _redis_full(redis: ArqRedis) -> bool:
    """Whether Redis is at its ``maxmemory`` (within 1%: it refuses writes once over it, and frees a little as
    keys expire), so that a missing heartbeat says nothing of the workers."""
    try:
        info = await read_memory_info(redis)
    except (RedisError, OSError):
        return False
    return info.maxmemory > 0 and info.used >= 0.99 * info.maxmemory


def _time_out(future: asyncio.Future[TaskReply], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(ServiceError(ErrorKind.TIMEOUT, f"no result within {timeout_s:g}s; retry later"))


def _unreachable() -> ServiceError:
    return ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly")


def _store_full() -> ServiceError:
    return ServiceError(ErrorKind.INSUFFICIENT_STORAGE, "the job store is out of memory; retry later")


def _backlog_full() -> ServiceError:
    return ServiceError(ErrorKind.RATE_LIMITED, "too much work is queued right now; retry shortly")


def _key_backlog_full(owner: str, held: int, share: int) -> ServiceError:
    if owner == ANONYMOUS:
        who, them, their = "unauthenticated requests already have", "them", "their"
    else:
        who, them, their = "this API key already has", "it", "its"
    return ServiceError(
        ErrorKind.KEY_BACKLOG_FULL,
        f"{who} {held} texts queued or being encoded, and this request's would take {them} past {their} share of "
        f"the queue (MAX_QUEUED_TEXTS_PER_KEY={share}); retry shortly",
    )


def _enqueue_failed() -> ServiceError:
    return ServiceError(ErrorKind.INTERNAL, "the request could not be queued")
