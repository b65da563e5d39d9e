"""arq's enqueue, claim and finish, batched: one round trip for many jobs, over arq's own keys and job format.

arq spends about seven round trips on each job (a WATCH/MULTI transaction to enqueue it, another to claim it,
one to start it, one to finish it). Embedding jobs are small and many, so the API enqueues every job that
arrived in the same event-loop tick with one script, and a worker claims (and later finishes) all the jobs it
can take with one script. Jobs stay arq jobs: arq's keys, arq's job format (with our msgpack serializer).

A queue entry's id is ``queue_job_id(request_id, texts)``: its number of texts rides in the id, so the claim and
withdraw scripts keep the text budget and the backlog without reading job bodies. Python builds that id in one
place (``queue_job_id``) and only Lua reads it back (``_TEXTS_OF``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job_raw, serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import OutOfMemoryError

from shared import keys
from shared.backlog import READ_COUNTER_LUA, Backlog
from shared.epoch import CURRENT_EPOCH_LUA, candidate_id

#: name of the arq function that embeds one ``EmbedJob``
EMBED_FUNCTION = "embed"


def serialize_arq_job(job: dict[str, Any]) -> bytes:
    """arq job serializer: msgpack, so no worker ever unpickles data from Redis."""
    packed: bytes = msgpack.packb(job, use_bin_type=True)
    return packed


def deserialize_arq_job(data: bytes) -> dict[str, Any]:
    job: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return job


#: seconds an unread reply list lives (its API process may have died)
REPLY_TTL_S = 60
#: how long arq keeps a job's retry counter, as arq itself does
_RETRY_KEY_TTL_S = 88_400
#: queue entries one claim looks at
_CLAIM_SCAN_LIMIT = 10_000

# Lua: the texts of a queue entry, from its id (see ``queue_job_id``)
_TEXTS_OF = """
local function texts_of(id)
    return tonumber(string.match(id, '%.(%d+)$') or '1')
end
"""

# KEYS: queue, backlog counter, epoch, then one job key per job.
# ARGV: backlog limit, wake channel, now (ms), candidate epoch id, then per job: id, payload, expiry (ms), texts.
# Returns the epoch the jobs were written in, then one flag per job: 1 enqueued, 0 refused because the backlog is
# full. Publishes the queue's name.
_ENQUEUE = (
    CURRENT_EPOCH_LUA
    + READ_COUNTER_LUA
    + """
local epoch = current_epoch(KEYS[3], ARGV[4])
local queued = read_counter(KEYS[2])
local limit = tonumber(ARGV[1])
local added = 0
local result = {epoch}
for i = 0, (#ARGV - 4) / 4 - 1 do
    local base = 5 + 4 * i
    local texts = tonumber(ARGV[base + 3])
    if queued + added > 0 and queued + added + texts > limit then
        result[i + 2] = 0
    else
        redis.call('PSETEX', KEYS[4 + i], ARGV[base + 2], ARGV[base + 1])
        redis.call('ZADD', KEYS[1], ARGV[3], ARGV[base])
        added = added + texts
        result[i + 2] = 1
    end
end
if added > 0 then
    redis.call('INCRBY', KEYS[2], added)
    redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return result
"""
)

# KEYS: queue. ARGV: now (ms), lease (ms), most jobs to claim, most texts to claim, entries to scan, arq's key
# prefixes (in-progress, job, retry), retry key TTL, the progress key prefix of the chunks' parents ("" for a queue
# of requests). Returns id, job, try, texts, cancelled (1 or 0) for each claimed job, flattened. A chunk's parent
# (``shared.chunks``) is marked started, unless it was cancelled: that rides the claim instead of costing round trips.
# The first job is taken whatever its size. A claimed job's score moves to the end of its lease (renewals move
# it on), so claims scan only the jobs that wait for a worker, or whose worker died, not the running ones.
_CLAIM = (
    _TEXTS_OF
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
local claimed = {}
local most_jobs = tonumber(ARGV[3])
local texts_left = tonumber(ARGV[4])
for _, id in ipairs(ids) do
    if #claimed >= 4 * most_jobs then
        break
    end
    local texts = texts_of(id)
    if #claimed > 0 and texts > texts_left then
        break
    end
    local in_progress = ARGV[6] .. id
    if redis.call('EXISTS', in_progress) == 0 then
        local job = redis.call('GET', ARGV[7] .. id)
        if job then
            redis.call('PSETEX', in_progress, ARGV[2], '1')
            redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
            local try = redis.call('INCR', ARGV[8] .. id)
            redis.call('EXPIRE', ARGV[8] .. id, ARGV[9])
            texts_left = texts_left - texts
            local cancelled = 0
            if ARGV[10] ~= '' then
                local progress = ARGV[10] .. (string.match(id, '^(.+)%-%d+%.%d+$') or id)
                if redis.call('HEXISTS', progress, 'cancelled') == 1 then
                    cancelled = 1
                elseif redis.call('EXISTS', progress) == 1 then
                    redis.call('HSET', progress, 'started', 1)
                end
            end
            table.insert(claimed, id)
            table.insert(claimed, job)
            table.insert(claimed, try)
            table.insert(claimed, texts)
            table.insert(claimed, cancelled)
        else
            redis.call('ZREM', KEYS[1], id)
        end
    end
end
return claimed
"""
)


# KEYS: queue. ARGV: arq's in-progress and job key prefixes, then job ids. Takes each job that no worker holds off
# the queue and drops its definition; returns how many jobs it took and their texts.
_WITHDRAW = (
    _TEXTS_OF
    + """
local taken, texts = 0, 0
for i = 3, #ARGV do
    local id = ARGV[i]
    if redis.call('EXISTS', ARGV[1] .. id) == 0 and redis.call('ZREM', KEYS[1], id) == 1 then
        redis.call('DEL', ARGV[2] .. id)
        taken = taken + 1
        texts = texts + texts_of(id)
    end
end
return {taken, texts}
"""
)


# KEYS: a reply list. ARGV: its TTL (s), then the replies. Allowed past maxmemory (Redis 7's script flags): replies
# are small and read within milliseconds.
_PUSH_PAST_MAXMEMORY = """#!lua flags=allow-oom
redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    job_id: str
    message: bytes
    enqueued_ms: int
    expires_ms: int
    texts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Enqueued:
    epoch: str
    #: per job: written, or refused because the backlog is full
    admitted: list[bool]


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: str
    message: bytes
    attempt: int
    texts: int
    #: a chunk whose parent was cancelled before this claim
    cancelled: bool = False


def _message_of(arq_job: bytes) -> bytes:
    """Our message inside an arq job; the raw bytes when they are not an arq job carrying one, so the worker's
    undecodable-message path moves them aside instead of a decoding error stopping the worker."""
    try:
        _, job_args, _, _, _ = deserialize_job_raw(arq_job, deserializer=deserialize_arq_job)
    except Exception:  # arq raises DeserializationError, but a hostile entry may break its unpacking otherwise
        return arq_job
    message = job_args[0] if isinstance(job_args, (list, tuple)) and job_args else None
    return message if isinstance(message, bytes) else arq_job


def queue_job_id(request_id: str, texts: int) -> str:
    """The arq job id of a request or chunk: its id and its number of texts, which claims budget by."""
    return f"{request_id}.{texts}"


@dataclasses.dataclass(frozen=True, slots=True)
class FinishedJob:
    job_id: str
    texts: int
    #: where to push ``reply`` (synchronous jobs); None for chunks and for jobs nobody waits for
    reply_to: str | None = None
    reply: bytes | None = None


class JobQueue:
    """One arq queue, with its own backlog counter (``shared.backlog``); build it with ``sync`` or ``chunks``."""

    def __init__(self, redis: Redis, queue: str, backlog_key: str, parents_prefix: str = "") -> None:
        """``parents_prefix``: for a queue of chunks, the prefix of their parents' progress keys."""
        self._redis = redis
        self._queue = queue
        self._backlog_key = backlog_key
        self._parents_prefix = parents_prefix
        self.backlog = Backlog(redis, backlog_key)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._withdraw = redis.register_script(_WITHDRAW)
        self._push_past_maxmemory = redis.register_script(_PUSH_PAST_MAXMEMORY)

    @classmethod
    def sync(cls, redis: Redis) -> JobQueue:
        """The queue of synchronous ``/v1/embeddings`` requests."""
        return cls(redis, keys.SYNC_QUEUE, keys.QUEUED_TEXTS)

    @classmethod
    def chunks(cls, redis: Redis) -> JobQueue:
        """The queue of asynchronous jobs' chunks, bounded apart from the synchronous one."""
        return cls(redis, keys.CHUNK_QUEUE, keys.QUEUED_CHUNK_TEXTS, keys.PROGRESS_PREFIX)

    async def enqueue(self, jobs: Sequence[NewJob], backlog_limit: int, now_ms: int) -> Enqueued:
        """Enqueue ``jobs`` as arq jobs, as far as the backlog bound allows: whether each one was, and in which
        epoch of Redis (``shared.epoch``)."""
        args: list[str | bytes | int] = [backlog_limit, keys.WAKE_CHANNEL, now_ms, candidate_id()]
        for job in jobs:
            payload = serialize_job(
                EMBED_FUNCTION, (job.message,), {}, None, job.enqueued_ms, serializer=serialize_arq_job
            )
            args += [job.job_id, payload, job.expires_ms, job.texts]
        job_keys = [job_key_prefix + job.job_id for job in jobs]
        epoch, *flags = await self._enqueue(keys=[self._queue, self._backlog_key, keys.EPOCH, *job_keys], args=args)
        return Enqueued(epoch.decode(), [bool(flag) for flag in flags])

    async def claim(self, most_jobs: int, most_texts: int, lease_ms: int, now_ms: int) -> list[ClaimedJob]:
        """Claim due jobs no worker holds, each for ``lease_ms``: up to ``most_jobs`` jobs and ``most_texts``
        texts, and at least one job when one is due."""
        limits: list[str | int] = [now_ms, lease_ms, most_jobs, most_texts, _CLAIM_SCAN_LIMIT]
        prefixes: list[str | int] = [in_progress_key_prefix, job_key_prefix, retry_key_prefix, _RETRY_KEY_TTL_S]
        flat = await self._claim(keys=[self._queue], args=[*limits, *prefixes, self._parents_prefix])
        return [
            ClaimedJob(flat[i].decode(), _message_of(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]), flat[i + 4] == 1)
            for i in range(0, len(flat), 5)
        ]

    async def finish(self, jobs: Sequence[FinishedJob]) -> None:
        """End ``jobs``: drop them from arq's keys, deliver their replies and release their texts, in one round trip
        of a few commands (one delete for every job, one push per reply list).

        Replies and the release are tiny but Redis refuses them when it is out of memory (they may grow it); they
        are then written again by a script allowed past ``maxmemory``, so a full Redis still answers every waiting
        request and keeps its backlog count, instead of leaving requests to time out.
        """
        replies: dict[str, list[bytes]] = {}
        for job in jobs:
            if job.reply_to is not None and job.reply is not None:
                replies.setdefault(job.reply_to, []).append(job.reply)
        released = sum(job.texts for job in jobs)
        redo: list[Callable[[], Awaitable[object]] | None] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            # the deletes first: they free memory, and Redis never refuses them
            pipe.delete(
                *[
                    prefix + job.job_id
                    for job in jobs
                    for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix)
                ]
            )
            pipe.zrem(self._queue, *[job.job_id for job in jobs])
            redo += [None, None]
            for reply_to, messages in replies.items():
                pipe.lpush(reply_to, *messages)
                pipe.expire(reply_to, REPLY_TTL_S)
                redo += [functools.partial(self._push_despite_oom, reply_to, messages), None]
            if released:
                self.backlog.release_in(pipe, released)
                redo.append(functools.partial(self.backlog.release_despite_oom, released))
            results = await pipe.execute(raise_on_error=False)
        for result, again in zip(results, redo, strict=True):
            if isinstance(result, OutOfMemoryError) and again is not None:
                await again()
            elif isinstance(result, Exception):
                raise result

    async def _push_despite_oom(self, reply_to: str, messages: list[bytes]) -> None:
        await self._push_past_maxmemory(keys=[reply_to], args=[REPLY_TTL_S, *messages])

    async def withdraw(self, job_ids: Sequence[str]) -> int:
        """Take jobs no worker has claimed off the queue, releasing their texts; how many were taken.
        Claimed ones run to their end (and release their texts then)."""
        if not job_ids:
            return 0
        taken, texts = await self._withdraw(keys=[self._queue], args=[in_progress_key_prefix, job_key_prefix, *job_ids])
        if texts:
            await self.backlog.release(int(texts))
        return int(taken)

    def renew_in(self, pipe: Pipeline, job_ids: Sequence[str], lease_ms: int, now_ms: int) -> None:
        """Add to ``pipe`` the commands that extend the leases of claimed jobs by ``lease_ms`` from now."""
        for job_id in job_ids:
            pipe.pexpire(in_progress_key_prefix + job_id, lease_ms)
        if job_ids:
            pipe.zadd(self._queue, dict.fromkeys(job_ids, now_ms + lease_ms), xx=True)

    async def unclaim(self, job_id: str, now_ms: int) -> None:
        """Give a claimed job back, to be claimed again at once (its attempt count goes on)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(in_progress_key_prefix + job_id)
            pipe.zadd(self._queue, {job_id: now_ms}, xx=True)
            await pipe.execute()
