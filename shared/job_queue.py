"""arq's enqueue, claim and finish, batched: one round trip for many jobs, over arq's own keys and job format.

arq spends about seven round trips on each job (a WATCH/MULTI transaction to enqueue it, another to claim it,
one to start it, one to finish it). Embedding jobs are small and many, so the API enqueues every job that
arrived in the same event-loop tick with one script, and a worker claims (and later finishes) all the jobs it
can take with one script. Jobs stay arq jobs: arq's job key and job format (with our msgpack serializer).

A claim is one write: the entry's score. A claimed entry's score is the end of its lease (so claims, which read
only entries due by now, never see it while its worker lives), and its fraction counts the job's attempts
(``ATTEMPT_STEPS``): arq's in-progress and retry keys (three more writes a job, and a delete of each at its end)
would only say the same again, and nothing but these scripts read them.

A queue entry's id (``shared.queue_format.queue_job_id``) carries its number of texts and its owner (whose share of
the backlog it counts against), so the scripts keep the text budget and the backlog without reading job bodies.

An entry of the sync queue carries the requests of one owner that one enqueue round wrote (``api.dispatch``), one
message each, as its arq job's arguments: what a job costs Redis (its definition written, read and deleted, its
entry added, leased and removed) is paid once an entry, not once a request. A worker answers each request as it is
done and ends the entry when all are (``worker.sync_jobs``).

The backlog (``shared.backlog``) counts an entry from the script that puts it on the queue to the one that takes it
off: finishing it, withdrawing it, or a claim dropping it because its job is gone. Each of them releases the texts
of the entries it removed, so an entry is released once, whoever gets to it first.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgpack
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job_raw, serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, OutOfMemoryError

from shared import clock, keys
from shared.backlog import READ_COUNTER_LUA, READ_SHARE_LUA, RELEASE_LUA
from shared.epoch import CURRENT_EPOCH_LUA, candidate_id
from shared.queue_format import PARENT_OF_LUA, PARSE_ID_LUA, PROGRESS_FIELDS_LUA

#: the name of the arq function every job carries, whatever its task (the worker runs them itself: ``worker.app``)
TASK_FUNCTION = "task"


def serialize_arq_job(job: dict[str, Any]) -> bytes:
    """arq job serializer: msgpack, so no worker ever unpickles data from Redis."""
    packed: bytes = msgpack.packb(job, use_bin_type=True)
    return packed


def deserialize_arq_job(data: bytes) -> dict[str, Any]:
    job: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return job


#: seconds an unread reply list lives (its API process may have died)
REPLY_TTL_S = 60
#: a queue entry's score is a time in whole milliseconds plus its job's attempts so far in ``1 / ATTEMPT_STEPS``:
#: exact in a double while the milliseconds stay below 2**43 (the year 2248)
ATTEMPT_STEPS = 1024
#: attempts counted at most; a job is abandoned long before (``MAX_JOB_ATTEMPTS``)
MOST_ATTEMPTS = ATTEMPT_STEPS - 1


def queue_score(ms: int, attempts: int) -> float:
    """The score of an entry due at ``ms`` (or whose lease ends then) whose job has run ``attempts`` times."""
    return ms + min(attempts, MOST_ATTEMPTS) / ATTEMPT_STEPS


#: queue entries one claim looks at
_CLAIM_SCAN_LIMIT = 10_000

# Lua: ``release_entries(counter, hash, ids)``, the texts of entries just taken off the queue given back to the
# backlog counter and to their owners' shares (``shared.backlog``)
_RELEASE_ENTRIES = (
    PARSE_ID_LUA
    + RELEASE_LUA
    + """
local function release_entries(counter, hash, ids)
    local total, by_owner = 0, {}
    for _, id in ipairs(ids) do
        local texts, owner = parse_id(id)
        total = total + texts
        if owner then
            by_owner[owner] = (by_owner[owner] or 0) + texts
        end
    end
    release(counter, hash, total, by_owner)
end
"""
)

# KEYS: queue, backlog counter, per-owner backlog hash, epoch, then one job key per job.
# ARGV: backlog limit, each owner's share (0: none), wake channel, now (ms), candidate epoch id, then per job: id,
# payload, expiry (ms), texts.
# Returns the epoch the jobs were written in, then one number per job: 1 enqueued, 0 refused because the backlog is
# full, -n refused because its owner already holds n texts and the job's would take it past its share. Publishes
# the queue's name. The texts of an entry already on the queue (an id enqueued twice) are not counted again.
_ENQUEUE = (
    CURRENT_EPOCH_LUA
    + READ_COUNTER_LUA
    + READ_SHARE_LUA
    + PARSE_ID_LUA
    + """
local epoch = current_epoch(KEYS[4], ARGV[5])
local queued = read_counter(KEYS[2])
if queued == 0 then
    redis.call('DEL', KEYS[3])
end
local limit = tonumber(ARGV[1])
local share = tonumber(ARGV[2])
local added = 0
local held, grown = {}, {}
local result = {epoch}
for i = 0, (#ARGV - 5) / 4 - 1 do
    local base = 6 + 4 * i
    local id = ARGV[base]
    local texts = tonumber(ARGV[base + 3])
    local _, owner = parse_id(id)
    local mine = 0
    if owner then
        mine = held[owner] or read_share(KEYS[3], owner)
        held[owner] = mine
    end
    if queued + added > 0 and queued + added + texts > limit then
        result[i + 2] = 0
    elseif share > 0 and mine > 0 and mine + texts > share then
        result[i + 2] = -mine
    else
        redis.call('PSETEX', KEYS[5 + i], ARGV[base + 2], ARGV[base + 1])
        if redis.call('ZADD', KEYS[1], ARGV[4], id) == 1 then
            added = added + texts
            if owner then
                held[owner] = mine + texts
                grown[owner] = (grown[owner] or 0) + texts
            end
        end
        result[i + 2] = 1
    end
end
if added > 0 then
    redis.call('INCRBY', KEYS[2], added)
    for owner, texts in pairs(grown) do
        redis.call('HINCRBY', KEYS[3], owner, texts)
    end
    redis.call('PUBLISH', ARGV[3], KEYS[1])
end
return result
"""
)

# Lua: ``attempts_of(score)``, the attempts a queue entry's score counts (``queue_score``)
_ATTEMPTS_OF = f"""
local function attempts_of(score)
    return math.floor((score - math.floor(score)) * {ATTEMPT_STEPS} + 0.5)
end
"""

# KEYS: queue, backlog counter, per-owner backlog hash. ARGV: now (ms), lease (ms), most jobs to claim, most texts
# to claim, entries to scan, arq's job key prefix, the progress key prefix of the chunks' parents ("" for a queue
# of requests). Returns id, job, try, texts, cancelled (1 or 0) for each claimed job, flattened. A chunk's parent
# (``shared.chunks``) is marked started, unless it was cancelled: that rides the claim instead of costing round
# trips. The first job is taken whatever its size. A claimed job's score moves to the end of its lease (renewals
# move it on), with its attempts in the score's fraction, so claims scan only the jobs that wait for a worker, or
# whose worker died, not the running ones. An entry whose job is gone (expired) is dropped, and its texts released.
_CLAIM = (
    _RELEASE_ENTRIES
    + PARENT_OF_LUA
    + PROGRESS_FIELDS_LUA
    + _ATTEMPTS_OF
    + f"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local claimed = {{}}
local dropped = {{}}
local most_jobs = tonumber(ARGV[3])
local texts_left = tonumber(ARGV[4])
local lease_end = tonumber(ARGV[1]) + tonumber(ARGV[2])
for i = 1, #due, 2 do
    local id = due[i]
    if #claimed >= 5 * most_jobs then
        break
    end
    local texts = parse_id(id)
    if #claimed > 0 and texts > texts_left then
        break
    end
    local job = redis.call('GET', ARGV[6] .. id)
    if job then
        local try = math.min(attempts_of(tonumber(due[i + 1])) + 1, {MOST_ATTEMPTS})
        redis.call('ZADD', KEYS[1], 'XX', lease_end + try / {ATTEMPT_STEPS}, id)
        texts_left = texts_left - texts
        local cancelled = 0
        if ARGV[7] ~= '' then
            local progress = ARGV[7] .. parent_of(id)
            if redis.call('HEXISTS', progress, F.cancelled) == 1 then
                cancelled = 1
            elseif redis.call('EXISTS', progress) == 1 then
                redis.call('HSET', progress, F.started, 1)
            end
        end
        table.insert(claimed, id)
        table.insert(claimed, job)
        table.insert(claimed, try)
        table.insert(claimed, texts)
        table.insert(claimed, cancelled)
    elseif redis.call('ZREM', KEYS[1], id) == 1 then
        table.insert(dropped, id)
    end
end
release_entries(KEYS[2], KEYS[3], dropped)
return claimed
"""
)

# KEYS: queue. ARGV: now (ms), a job id. A claimed job given back: due at once, its attempts kept.
_UNCLAIM = (
    _ATTEMPTS_OF
    + f"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if score then
    local attempts = attempts_of(tonumber(score))
    redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) - 1 + attempts / {ATTEMPT_STEPS}, ARGV[2])
end
return 1
"""
)


# KEYS: queue, backlog counter, per-owner backlog hash. ARGV: now (ms), arq's job key prefix, then job ids. Takes
# each job that no worker holds (due by now: waiting, or its lease ended) off the queue, drops its definition and
# releases its texts; returns how many jobs it took. It only shrinks Redis, and its first write removes something,
# so Redis runs it past maxmemory too.
_WITHDRAW = (
    _RELEASE_ENTRIES
    + """
local taken = {}
local now = tonumber(ARGV[1])
for i = 3, #ARGV do
    local id = ARGV[i]
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
        redis.call('ZREM', KEYS[1], id)
        redis.call('DEL', ARGV[2] .. id)
        table.insert(taken, id)
    end
end
release_entries(KEYS[2], KEYS[3], taken)
return #taken
"""
)

# KEYS: queue, backlog counter, per-owner backlog hash. ARGV: job ids. Takes finished jobs off the queue and
# releases the texts of those it took (an entry a claim dropped meanwhile was released by that claim); returns how
# many it took. Like ``_WITHDRAW``, it runs past maxmemory: its first write removes something.
_END = (
    _RELEASE_ENTRIES
    + """
local ended = {}
for _, id in ipairs(ARGV) do
    if redis.call('ZREM', KEYS[1], id) == 1 then
        table.insert(ended, id)
    end
end
release_entries(KEYS[2], KEYS[3], ended)
return #ended
"""
)

# ``_END`` allowed past maxmemory (Redis 7's script flags), should Redis refuse it all the same: it grows nothing.
_END_PAST_MAXMEMORY = "#!lua flags=allow-oom\n" + _END


# KEYS: a reply list. ARGV: its TTL (s), then the replies. Allowed past maxmemory (Redis 7's script flags): replies
# are small and read within milliseconds.
_PUSH_PAST_MAXMEMORY = """#!lua flags=allow-oom
redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """A queue entry to write: one job (a chunk, a request), or on the sync queue the requests of one owner that one
    enqueue round carries (``api.dispatch``), each message a request's, its ``texts`` all of theirs."""

    job_id: str
    messages: tuple[bytes, ...]
    enqueued_ms: int
    expires_ms: int
    texts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Enqueued:
    epoch: str
    #: per job: written, or refused (the backlog is full, or its owner holds its share)
    admitted: list[bool]
    #: per job: if it was refused because its owner holds its share of the backlog, the texts the owner holds;
    #: else 0
    owner_holds: list[int]


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: str
    #: the entry's messages, one a request (or chunk); an entry that is not an arq job carrying them, as it is
    messages: list[bytes]
    attempt: int
    texts: int
    #: a chunk whose parent was cancelled before this claim
    cancelled: bool = False


def _messages_of(arq_job: bytes) -> list[bytes]:
    """Our messages inside an arq job (its arguments); the raw bytes alone when they are not an arq job carrying
    them, so the worker's undecodable-message path moves them aside instead of a decoding error stopping the
    worker."""
    try:
        _, job_args, _, _, _ = deserialize_job_raw(arq_job, deserializer=deserialize_arq_job)
    except Exception:  # arq raises DeserializationError, but a hostile entry may break its unpacking otherwise
        return [arq_job]
    if isinstance(job_args, (list, tuple)) and job_args and all(isinstance(message, bytes) for message in job_args):
        return list(job_args)
    return [arq_job]


#: what an owner may be named in a queue id: what ``api.auth`` names them (16 hex digits, or "anonymous"), and then
#: some; never a ":"
@dataclasses.dataclass(frozen=True, slots=True)
class FinishedJob:
    #: the queue entry that ends; None: ``reply`` alone, for one of an entry's several requests (the entry ends apart)
    job_id: str | None
    #: where to push ``reply`` (synchronous jobs); None for chunks and for jobs nobody waits for
    reply_to: str | None = None
    reply: bytes | None = None


class JobQueue:
    """One arq queue, with its own backlog counter and per-owner hash (``shared.backlog``); build it with ``sync`` or
    ``chunks``."""

    def __init__(
        self, redis: Redis, queue: str, backlog_key: str, per_key_backlog_key: str, parents_prefix: str = ""
    ) -> None:
        """``parents_prefix``: for a queue of chunks, the prefix of their parents' progress keys."""
        self._redis = redis
        self._queue = queue
        #: the keys of every script that takes entries off the queue: the queue and the counts it releases
        self._counted = [queue, backlog_key, per_key_backlog_key]
        self._parents_prefix = parents_prefix
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._withdraw = redis.register_script(_WITHDRAW)
        self._unclaim = redis.register_script(_UNCLAIM)
        self._end = redis.register_script(_END)
        self._end_past_maxmemory = redis.register_script(_END_PAST_MAXMEMORY)
        self._push_past_maxmemory = redis.register_script(_PUSH_PAST_MAXMEMORY)

    @classmethod
    def sync(cls, redis: Redis) -> JobQueue:
        """The queue of synchronous requests, of every task (embed, rerank): answered while their clients wait."""
        return cls(redis, keys.SYNC_QUEUE, keys.QUEUED_TEXTS, keys.QUEUED_TEXTS_PER_KEY)

    @classmethod
    def chunks(cls, redis: Redis) -> JobQueue:
        """The queue of asynchronous jobs' chunks, bounded apart from the synchronous one."""
        return cls(
            redis, keys.CHUNK_QUEUE, keys.QUEUED_CHUNK_TEXTS, keys.QUEUED_CHUNK_TEXTS_PER_KEY, keys.PROGRESS_PREFIX
        )

    async def enqueue(
        self, jobs: Sequence[NewJob], backlog_limit: int, now_ms: int, *, per_key_limit: int = 0
    ) -> Enqueued:
        """Enqueue ``jobs`` as arq jobs, as far as the backlog bound and their owners' shares (``per_key_limit``
        texts each; 0: no share) allow: whether each one was, and in which epoch of Redis (``shared.epoch``)."""
        args: list[str | bytes | int] = [backlog_limit, per_key_limit, keys.WAKE_CHANNEL, now_ms, candidate_id()]
        for job in jobs:
            payload = serialize_job(
                TASK_FUNCTION, job.messages, {}, None, job.enqueued_ms, serializer=serialize_arq_job
            )
            args += [job.job_id, payload, job.expires_ms, job.texts]
        job_keys = [job_key_prefix + job.job_id for job in jobs]
        epoch, *flags = await self._enqueue(keys=[*self._counted, keys.EPOCH, *job_keys], args=args)
        return Enqueued(epoch.decode(), [flag == 1 for flag in flags], [max(0, -flag) for flag in flags])

    async def claim(self, most_jobs: int, most_texts: int, lease_ms: int, now_ms: int) -> list[ClaimedJob]:
        """Claim due jobs no worker holds, each for ``lease_ms``: up to ``most_jobs`` jobs and ``most_texts``
        texts, and at least one job when one is due."""
        limits: list[str | int] = [now_ms, lease_ms, most_jobs, most_texts, _CLAIM_SCAN_LIMIT]
        flat = await self._claim(keys=self._counted, args=[*limits, job_key_prefix, self._parents_prefix])
        return [
            ClaimedJob(
                flat[i].decode(), _messages_of(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]), flat[i + 4] == 1
            )
            for i in range(0, len(flat), 5)
        ]

    async def finish(self, jobs: Sequence[FinishedJob]) -> None:
        """End ``jobs``: drop their arq jobs and take them off the queue, deliver their replies and release their
        texts, in one round trip of a few commands (one delete for every job, one script that takes them off the
        queue and releases what they held, one push per reply list).

        Replies are tiny but Redis refuses them when it is out of memory (they may grow it); they are then written
        again by a script allowed past ``maxmemory``, so a full Redis still answers every waiting request instead
        of leaving requests to time out. The release's script begins by removing entries, so Redis runs it past
        ``maxmemory`` too, and the backlog count stays right. The script goes by its SHA, not as a registered
        script: a pipeline holding one asks Redis whether it exists before every execute, one more round trip on
        every batch's finish; when Redis lacks it (its first use, or a restart), it runs again, loaded.
        """
        replies: dict[str, list[bytes]] = {}
        for job in jobs:
            if job.reply_to is not None and job.reply is not None:
                replies.setdefault(job.reply_to, []).append(job.reply)
        job_ids = [job.job_id for job in jobs if job.job_id is not None]
        redo: list[Callable[[], Awaitable[object]] | None] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            if job_ids:
                # the deletes first: they free memory, and Redis never refuses them
                pipe.delete(*[job_key_prefix + job_id for job_id in job_ids])
                pipe.evalsha(self._end.sha, len(self._counted), *self._counted, *job_ids)
                redo += [None, functools.partial(self._end_again, job_ids)]
            for reply_to, messages in replies.items():
                pipe.lpush(reply_to, *messages)
                pipe.expire(reply_to, REPLY_TTL_S)
                redo += [functools.partial(self._push_despite_oom, reply_to, messages), None]
            results = await pipe.execute(raise_on_error=False)
        for result, again in zip(results, redo, strict=True):
            if isinstance(result, (OutOfMemoryError, NoScriptError)) and again is not None:
                await again()
            elif isinstance(result, Exception):
                raise result

    async def _end_again(self, job_ids: list[str]) -> None:
        """``_END``, loaded into Redis if it lacks it; past ``maxmemory`` if Redis refuses it all the same."""
        try:
            await self._end(keys=self._counted, args=job_ids)
        except OutOfMemoryError:
            await self._end_past_maxmemory(keys=self._counted, args=job_ids)

    async def _push_despite_oom(self, reply_to: str, messages: list[bytes]) -> None:
        await self._push_past_maxmemory(keys=[reply_to], args=[REPLY_TTL_S, *messages])

    async def withdraw(self, job_ids: Sequence[str], now_ms: int | None = None) -> int:
        """Take jobs no worker holds off the queue, releasing their texts; how many were taken. Claimed ones run to
        their end (and release their texts then); one whose lease ended by ``now_ms`` (default: now) is taken."""
        if not job_ids:
            return 0
        now = clock.now_ms() if now_ms is None else now_ms
        taken = await self._withdraw(keys=self._counted, args=[now, job_key_prefix, *job_ids])
        return int(taken)

    def renew_in(self, pipe: Pipeline, held: Mapping[str, int], lease_ms: int, now_ms: int) -> None:
        """Add to ``pipe`` the command that extends the leases of claimed jobs (each id with its attempt) by
        ``lease_ms`` from now."""
        if held:
            scores = {job_id: queue_score(now_ms + lease_ms, attempt) for job_id, attempt in held.items()}
            pipe.zadd(self._queue, scores, xx=True)

    async def unclaim(self, job_id: str, now_ms: int) -> None:
        """Give a claimed job back, to be claimed again at once (its attempt count goes on)."""
        await self._unclaim(keys=[self._queue], args=[now_ms, job_id])
