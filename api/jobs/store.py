"""Asynchronous embedding jobs in Redis: the record the API keeps (``keys.job``), read with its chunks' progress.

A job's inputs are cut into chunks of ``job_chunk_size`` inputs, each an entry on ``keys.CHUNK_QUEUE``;
``JobRecord`` names and measures them. Workers count finished chunks into the job's progress (``shared.chunks``).
"""

from __future__ import annotations

import dataclasses
import time

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.chunks import ChunkStore
from shared.queue_format import chunk_queue_id

#: how long a job's record outlives its results, so a late poll sees "expired" rather than "not found"
RECORD_GRACE_S = 86_400


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
    output_dtype: str = "float"
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

    def chunk_queue_id(self, chunk: int) -> str:
        """The chunk's arq job id in ``keys.CHUNK_QUEUE``."""
        return chunk_queue_id(self.job_id, chunk, self.chunk_span(chunk)[1])

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
    def __init__(self, redis: Redis, chunks: ChunkStore) -> None:
        self._redis = redis
        self.chunks = chunks

    async def create(self, record: JobRecord) -> None:
        fields = {
            "owner": record.owner,
            "model": record.model,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "total": record.total,
            "chunk_size": record.chunk_size,
            "encoding_format": record.encoding_format,
            "output_dtype": record.output_dtype,
            "dimensions": "" if record.dimensions is None else record.dimensions,
            "metadata": orjson.dumps(record.metadata),
        }
        kept_until = record.expires_at + RECORD_GRACE_S
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(record.job_id), mapping=fields)
            pipe.expireat(keys.job(record.job_id), kept_until)
            ChunkStore.create_in(
                pipe, record.job_id, total=record.total, chunks=record.chunk_count, expire_at_s=kept_until
            )
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        [found] = await self.chunks.records_with_progress([(keys.job(job_id), job_id)])
        if found is None:
            return None
        fields, progress = found
        return JobRecord(
            job_id=job_id,
            owner=fields["owner"],
            model=fields["model"],
            created_at=int(fields["created_at"]),
            expires_at=int(fields["expires_at"]),
            total=int(fields["total"]),
            chunk_size=int(fields["chunk_size"]),
            encoding_format=fields["encoding_format"],
            output_dtype=fields.get("output_dtype", "float"),
            dimensions=int(fields["dimensions"]) if fields["dimensions"] else None,
            metadata=orjson.loads(fields["metadata"]),
            completed=progress.completed,
            failed=progress.failed,
            prompt_tokens=progress.prompt_tokens,
            started=progress.started,
            cancelled=progress.cancelled,
            completed_at=progress.completed_at,
            chunk_errors=progress.chunk_errors,
        )

    async def delete(self, job_id: str, chunks: int = 0) -> None:
        """The job's record, its progress and its first ``chunks`` chunks' results."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.job(job_id))
            ChunkStore.delete_in(pipe, job_id, chunks)
            await pipe.execute()

    async def cancel(self, job_id: str) -> None:
        await self.chunks.cancel(job_id)

    async def with_losses(self, record: JobRecord) -> JobRecord:
        """``record`` with ``lost_chunks`` filled in, once every chunk is counted: the chunks that should hold
        vectors (those that did not fail) but hold none, gone from Redis by eviction or by hand."""
        if record.completed + record.failed < record.total:
            return record
        expected = [chunk for chunk in range(record.chunk_count) if chunk not in record.chunk_errors]
        lost = await self.chunks.missing_vectors(record.job_id, expected)
        return dataclasses.replace(record, lost_chunks=tuple(lost)) if lost else record
