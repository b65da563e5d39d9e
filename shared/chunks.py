"""Asynchronous embedding jobs in Redis: the record the API creates, the progress workers report, the chunks.

A job's inputs are split into chunks of ``job_chunk_size`` texts; each chunk is an arq job on
``keys.CHUNK_QUEUE`` that any worker may take (``JobRecord`` names and measures them). A finished chunk's vectors
are stored under ``keys.job_chunk`` and the job's counters move, atomically and once per chunk (``_CHUNK_DONE``).

A batch (``/v1/batches``) is counted the same way, in units of requests rather than inputs: its chunks hold whole
requests, and each request's outcome (``PartResult``) is stored beside the chunk's vectors.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable
from typing import cast

import msgpack
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.errors import ErrorKind
from shared.job_queue import queue_job_id
from shared.protocol import EmbedError
from shared.storage import RELEASE_PART_LUA, RESERVATION_KEYS

#: how long a job's record outlives its results, so a late poll sees "expired" rather than "not found"
RECORD_GRACE_S = 86_400

# KEYS: job hash, chunk vectors, chunk parts, then the store's reservation keys (``shared.storage``).
# ARGV: chunk, units completed, units failed, prompt tokens, now (s), error message or "", results' expiry (s),
# vectors or "", parts or "", input bytes to give back to the reservation of the job (id).
# Stores the chunk's results and counts it in one step, once per chunk however many workers ran it (a chunk skipped,
# cancelled or expired counts with zeros); stamps completed_at when the last unit lands, and finished_at when every
# chunk has (for records that say how many). Its first write (HSETNX) is refused when Redis is out of memory, and
# a script that has not written stops there: a chunk is counted if and only if its results were stored.
_CHUNK_DONE = (
    RELEASE_PART_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HSETNX', KEYS[1], 'done:' .. ARGV[1], 1) == 0 then
    return 0
end
if ARGV[8] ~= '' then
    redis.call('SET', KEYS[2], ARGV[8], 'EXAT', ARGV[7])
end
if ARGV[9] ~= '' then
    redis.call('SET', KEYS[3], ARGV[9], 'EXAT', ARGV[7])
end
local chunks_done = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
local chunks = redis.call('HGET', KEYS[1], 'chunks')
if chunks and chunks_done >= tonumber(chunks) then
    redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[5])
end
local completed = redis.call('HINCRBY', KEYS[1], 'completed', ARGV[2])
local failed = redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[4])
if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'error:' .. ARGV[1], ARGV[6])
end
if completed + failed >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
    redis.call('HSETNX', KEYS[1], 'completed_at', ARGV[5])
end
release_part(KEYS[4], KEYS[5], ARGV[11], ARGV[10])
return 1
"""
)
#: the same for a chunk that failed and stores no vectors, allowed past maxmemory (a few bytes), so that a full
#: Redis still learns that the chunk ended and its job finishes with the failure named (Redis 7's script flags)
_CHUNK_FAILED_DESPITE_OOM = "#!lua flags=allow-oom\n" + _CHUNK_DONE


@dataclasses.dataclass(frozen=True, slots=True)
class PartResult:
    """How one request of a batch chunk ended: its prompt tokens, or the error it failed with."""

    prompt_tokens: int = 0
    error: EmbedError | None = None


def _encode_parts(parts: list[PartResult]) -> bytes:
    packed: bytes = msgpack.packb(
        [
            [
                part.prompt_tokens,
                None if part.error is None else [part.error.kind.value, part.error.message, part.error.param],
            ]
            for part in parts
        ],
        use_bin_type=True,
    )
    return packed


def _decode_parts(data: bytes) -> list[PartResult]:
    return [
        PartResult(tokens, None if error is None else EmbedError(ErrorKind(error[0]), error[1], error[2]))
        for tokens, error in msgpack.unpackb(data, raw=False)
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    owner: str
    model: str
    created_at: int
    expires_at: int
    total: int
    chunk_size: int
    encoding_format: str
    dimensions: int | None
    metadata: dict[str, str]
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    started: bool = False
    cancelled: bool = False
    completed_at: int | None = None
    #: chunk index -> why it failed
    chunk_errors: dict[int, str] = dataclasses.field(default_factory=dict)
    #: chunks counted done whose vectors are gone from the store (``JobStore.with_losses``)
    lost_chunks: tuple[int, ...] = ()

    @property
    def chunk_count(self) -> int:
        return -(-self.total // self.chunk_size)

    def chunk_span(self, chunk: int) -> tuple[int, int]:
        """First input index and number of inputs of ``chunk``."""
        start = chunk * self.chunk_size
        return start, min(self.chunk_size, self.total - start)

    def chunks_between(self, start: int, end: int) -> range:
        """The chunks holding inputs ``start`` to ``end`` (exclusive)."""
        if start >= end:
            return range(0)
        return range(start // self.chunk_size, -(-end // self.chunk_size))

    def chunk_request_id(self, chunk: int) -> str:
        """How logs and the chunk's message name it."""
        return f"{self.job_id}-{chunk}"

    def chunk_queue_id(self, chunk: int) -> str:
        """The chunk's arq job id in ``keys.CHUNK_QUEUE``."""
        return queue_job_id(self.chunk_request_id(chunk), self.chunk_span(chunk)[1])

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if now >= self.expires_at:
            return "expired"
        if self.cancelled:
            return "cancelled"
        if self.completed + self.failed >= self.total:
            return "completed" if self.completed and not self.lost_chunks else "failed"
        return "in_progress" if self.started else "queued"


class JobStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._chunk_done = redis.register_script(_CHUNK_DONE)
        self._chunk_failed_despite_oom = redis.register_script(_CHUNK_FAILED_DESPITE_OOM)

    async def create(self, record: JobRecord) -> None:
        fields = {
            "owner": record.owner,
            "model": record.model,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "total": record.total,
            "chunk_size": record.chunk_size,
            "encoding_format": record.encoding_format,
            "dimensions": "" if record.dimensions is None else record.dimensions,
            "metadata": orjson.dumps(record.metadata),
            "completed": 0,
            "failed": 0,
            "prompt_tokens": 0,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(record.job_id), mapping=fields)
            pipe.expireat(keys.job(record.job_id), record.expires_at + RECORD_GRACE_S)
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        raw: dict[bytes, bytes] = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(keys.job(job_id)))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return JobRecord(
            job_id=job_id,
            owner=fields["owner"],
            model=fields["model"],
            created_at=int(fields["created_at"]),
            expires_at=int(fields["expires_at"]),
            total=int(fields["total"]),
            chunk_size=int(fields["chunk_size"]),
            encoding_format=fields["encoding_format"],
            dimensions=int(fields["dimensions"]) if fields["dimensions"] else None,
            metadata=orjson.loads(fields["metadata"]),
            completed=int(fields["completed"]),
            failed=int(fields["failed"]),
            prompt_tokens=int(fields["prompt_tokens"]),
            started="started" in fields,
            cancelled="cancelled" in fields,
            completed_at=int(fields["completed_at"]) if "completed_at" in fields else None,
            chunk_errors={int(k.split(":", 1)[1]): v for k, v in fields.items() if k.startswith("error:")},
        )

    async def delete(self, job_id: str, chunks: int = 0) -> None:
        """The job's record and its first ``chunks`` chunks' results."""
        stored = [
            key
            for chunk in range(chunks)
            for key in (keys.job_chunk(job_id, chunk), keys.job_chunk_parts(job_id, chunk))
        ]
        await self._redis.delete(keys.job(job_id), keys.job_workers(job_id), *stored)

    async def cancel(self, job_id: str) -> None:
        await cast(Awaitable[int], self._redis.hset(keys.job(job_id), "cancelled", "1"))

    async def is_cancelled(self, job_id: str) -> bool:
        return bool(await cast(Awaitable[bool], self._redis.hexists(keys.job(job_id), "cancelled")))

    async def mark_started(self, job_id: str, worker_id: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.job(job_id), "started", "1")
            pipe.sadd(keys.job_workers(job_id), worker_id)
            pipe.expire(keys.job_workers(job_id), RECORD_GRACE_S)
            await pipe.execute()

    async def chunk_done_in(
        self,
        pipe: Pipeline | None,
        job_id: str,
        chunk: int,
        *,
        vectors: bytes | None,
        parts: list[PartResult] | None = None,
        completed: int,
        failed: int,
        prompt_tokens: int,
        expires_at_s: int,
        error: str = "",
        input_bytes: int = 0,
        despite_oom: bool = False,
    ) -> None:
        """Store the chunk's vectors and its requests' outcomes (if any) and count it into the job's progress, in
        one step: queued in ``pipe``, or run at once without one. ``input_bytes``: what its inputs held of the job's
        reservation, given back. ``despite_oom``: for a chunk without vectors, even when Redis is out of memory."""
        if despite_oom and vectors is not None:
            raise ValueError("only a chunk without vectors may be written past maxmemory")
        script = self._chunk_failed_despite_oom if despite_oom else self._chunk_done
        chunk_keys = [keys.job(job_id), keys.job_chunk(job_id, chunk), keys.job_chunk_parts(job_id, chunk)]
        await script(
            keys=[*chunk_keys, *RESERVATION_KEYS],
            args=[
                chunk,
                completed,
                failed,
                prompt_tokens,
                int(time.time()),
                error,
                expires_at_s,
                vectors or b"",
                b"" if parts is None else _encode_parts(parts),
                input_bytes,
                job_id,
            ],
            client=pipe,
        )

    async def with_losses(self, record: JobRecord) -> JobRecord:
        """``record`` with ``lost_chunks`` filled in, once every chunk is counted: the chunks that should hold
        vectors (those that did not fail) but hold none, gone from Redis by eviction or by hand."""
        if record.completed + record.failed < record.total:
            return record
        expected = [chunk for chunk in range(record.chunk_count) if chunk not in record.chunk_errors]
        chunk_keys = [keys.job_chunk(record.job_id, chunk) for chunk in expected]
        if not expected or await self._redis.exists(*chunk_keys) == len(expected):
            return record  # every poll of a finished job asks: one command, unless something is missing
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in chunk_keys:
                pipe.exists(key)
            found = await pipe.execute()
        lost = tuple(chunk for chunk, present in zip(expected, found, strict=True) if not present)
        return dataclasses.replace(record, lost_chunks=lost) if lost else record

    async def missing_parts(self, job_id: str, chunks: int) -> list[int]:
        """The chunks of a batch (all counted done) whose requests' outcomes are gone from Redis."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in range(chunks):
                pipe.exists(keys.job_chunk_parts(job_id, chunk))
            found = await pipe.execute()
        return [chunk for chunk, present in enumerate(found) if not present]

    async def chunk_vectors(self, job_id: str, chunks: list[int]) -> list[bytes | None]:
        if not chunks:
            return []
        values: list[bytes | None] = await self._redis.mget([keys.job_chunk(job_id, c) for c in chunks])
        return values

    async def chunk_parts(self, job_id: str, chunks: list[int]) -> list[list[PartResult] | None]:
        """Batch chunks' outcomes per request; None for a chunk that has none (not run, or lost)."""
        if not chunks:
            return []
        values: list[bytes | None] = await self._redis.mget([keys.job_chunk_parts(job_id, c) for c in chunks])
        return [None if value is None else _decode_parts(value) for value in values]
