"""Batches in Redis: the record (``keys.batch``), read with its chunks' progress (``shared.chunks``, counted in
requests), and its manifest.

A batch's status follows from its record alone, so any API process answers for any batch:

    validating (inside the create call) -> in_progress -> completed        (finalizing: output is rendered on read)
                                        -> failed                          (the file did not validate)
                                        -> cancelling -> cancelled         (chunks running at the cancel finish)
                                        -> expired                         (its completion window ended first)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from api.batches.plan import ManifestEntry
from api.ids import ERRORS, OUTPUT, output_file_id
from shared import keys
from shared.chunks import ChunkStore, Progress

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRecord:
    batch_id: str
    owner: str
    model: str | None
    input_file_id: str
    created_at: int
    #: the end of its completion window
    expires_at: int
    #: when its record and results are dropped
    kept_until: int
    total: int
    chunks: int
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]]
    failed_at: int | None = None
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    chunks_done: int = 0
    cancelling_at: int | None = None
    completed_at: int | None = None
    finished_at: int | None = None
    deleted: frozenset[str] = frozenset()
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.failed_at is not None:
            return "failed"
        if self.cancelling_at is not None:
            return "cancelled" if self.chunks_done >= self.chunks else "cancelling"
        if self.completed + self.failed >= self.total:
            return "completed"
        return "expired" if now >= self.expires_at else "in_progress"

    def file_id(self, which: str, now: float | None = None) -> str | None:
        """The id of its output or error file, once it has one."""
        status = self.status(now)
        if status not in TERMINAL or status == "failed" or which in self.deleted:
            return None
        if which == OUTPUT:
            return output_file_id(self.batch_id, OUTPUT) if self.completed else None
        unfinished = self.total - self.completed - self.failed
        return output_file_id(self.batch_id, ERRORS) if self.failed or unfinished else None

    def as_object(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        now = time.time()  # one reading for the status and the files it implies
        status = self.status(now)
        return {
            "id": self.batch_id,
            "object": "batch",
            "endpoint": "/v1/embeddings",
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": self.file_id(OUTPUT, now),
            "error_file_id": self.file_id(ERRORS, now),
            "created_at": self.created_at,
            "in_progress_at": None if self.failed_at is not None else self.created_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.completed_at if status == "completed" else None,
            "completed_at": self.completed_at if status == "completed" else None,
            "failed_at": self.failed_at,
            "expired_at": self.expires_at if status == "expired" else None,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.finished_at if status == "cancelled" else None,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens,
            },
            "metadata": self.metadata,
        }


class BatchStore:
    def __init__(self, redis: Redis, chunks: ChunkStore) -> None:
        self._redis = redis
        self._chunks = chunks

    async def create(self, record: BatchRecord) -> None:
        fields: dict[str, str | int | bytes] = {
            "owner": record.owner,
            "model": record.model or "",
            "input_file_id": record.input_file_id,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "kept_until": record.kept_until,
            "total": record.total,
            "chunks": record.chunks,
            "metadata": orjson.dumps(record.metadata),
            "errors": orjson.dumps(record.errors),
        }
        if record.failed_at is not None:
            fields["failed_at"] = record.failed_at
        score = record.created_at * 1000
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(record.batch_id), mapping=fields)
            pipe.expireat(keys.batch(record.batch_id), record.kept_until)
            ChunkStore.create_in(
                pipe, record.batch_id, total=record.total, chunks=record.chunks, expire_at_s=record.kept_until
            )
            pipe.zadd(keys.owner_batches(record.owner), {record.batch_id: score})
            if record.failed_at is None:
                outputs = {output_file_id(record.batch_id, which): score for which in (OUTPUT, ERRORS)}
                pipe.zadd(keys.owner_files(record.owner), outputs)
            await pipe.execute()

    async def get(self, batch_id: str) -> BatchRecord | None:
        return (await self.get_many([batch_id]))[0]

    async def get_many(self, batch_ids: list[str]) -> list[BatchRecord | None]:
        """The batches, in one round trip; None for each that is gone."""
        found = await self._chunks.records_with_progress([(keys.batch(batch_id), batch_id) for batch_id in batch_ids])
        return [
            None if item is None else _parse(batch_id, *item) for batch_id, item in zip(batch_ids, found, strict=True)
        ]

    async def cancel(self, record: BatchRecord, withdrawn_chunks: int) -> None:
        """Mark it cancelling, counting the chunks taken off the queue as done (the others finish on their own)."""
        await self._chunks.cancel(record.batch_id, withdrawn_chunks)

    async def file_deleted(self, record: BatchRecord, which: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(record.batch_id), f"deleted:{which}", "1")
            pipe.zrem(keys.owner_files(record.owner), output_file_id(record.batch_id, which))
            await pipe.execute()

    async def remember_size(self, batch_id: str, which: str, size: int) -> None:
        await cast(Awaitable[int], self._redis.hset(keys.batch(batch_id), f"bytes:{which}", str(size)))

    async def manifest(self, batch_id: str, first_chunk: int, count: int) -> list[ManifestEntry]:
        raw = await cast(
            Awaitable[list[bytes]],
            self._redis.lrange(keys.batch_manifest(batch_id), first_chunk, first_chunk + count - 1),
        )
        return [ManifestEntry.unpack(entry) for entry in raw]

    async def delete(self, record: BatchRecord) -> None:
        """Everything of a batch that never started (its planning failed)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.batch(record.batch_id), keys.batch_manifest(record.batch_id))
            ChunkStore.delete_in(pipe, record.batch_id, record.chunks)
            pipe.zrem(keys.owner_batches(record.owner), record.batch_id)
            pipe.zrem(keys.owner_files(record.owner), *[output_file_id(record.batch_id, w) for w in (OUTPUT, ERRORS)])
            await pipe.execute()


def _parse(batch_id: str, fields: dict[str, str], progress: Progress) -> BatchRecord:
    return BatchRecord(
        batch_id=batch_id,
        owner=fields["owner"],
        model=fields["model"] or None,
        input_file_id=fields["input_file_id"],
        created_at=int(fields["created_at"]),
        expires_at=int(fields["expires_at"]),
        kept_until=int(fields["kept_until"]),
        total=int(fields["total"]),
        chunks=int(fields["chunks"]),
        metadata=orjson.loads(fields["metadata"]),
        errors=orjson.loads(fields["errors"]),
        failed_at=int(fields["failed_at"]) if "failed_at" in fields else None,
        completed=progress.completed,
        failed=progress.failed,
        prompt_tokens=progress.prompt_tokens,
        chunks_done=progress.chunks_done,
        cancelling_at=progress.cancelling_at,
        completed_at=progress.completed_at,
        finished_at=progress.finished_at,
        deleted=frozenset(name.removeprefix("deleted:") for name in fields if name.startswith("deleted:")),
        sizes={name.removeprefix("bytes:"): int(v) for name, v in fields.items() if name.startswith("bytes:")},
    )
