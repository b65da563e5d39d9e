"""The chunk contract between the API and the workers: how a chunk's work is counted and its results kept.

A job (``/v1/embeddings/jobs``) or a batch (``/v1/batches``), the chunks' *parent*, is cut into chunks, each an
entry on ``keys.CHUNK_QUEUE`` (``shared.protocol.EmbedChunk``) that any worker may take. Its parts, in Redis:

- the parent's progress (``keys.progress``), created by the API with the parent's record (``create_in``); the
  chunk queue's claim marks it started and tells the worker whether it was cancelled (``shared.job_queue``);
- a finished chunk's float32 vectors (``keys.chunk_vectors``, ``encode_vectors``) and, for a batch chunk, each of
  its requests' outcomes (``keys.chunk_parts``, ``PartResult``), stored and counted into the progress in one step
  and once per chunk, however many workers ran it (``ChunkStore.done_in``).

Counts are in the parent's units: inputs for a job, requests for a batch. The parent's record (who owns it, what it
is) belongs to the API alone (``api.jobs.store``, ``api.batches.store``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable
from typing import cast

import msgpack
import numpy as np
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.errors import ErrorKind
from shared.protocol import TaskError
from shared.queue_format import PROGRESS_FIELDS as _FIELD
from shared.queue_format import PROGRESS_FIELDS_LUA
from shared.storage import RELEASE_PART_LUA, RESERVATION_KEYS

# KEYS: progress hash, chunk vectors, chunk parts, then the store's reservation keys (``shared.storage``).
# ARGV: chunk, units completed, units failed, prompt tokens, now (s), error message or "", results' expiry (s),
# vectors or "", parts or "", input bytes to give back to the reservation of the parent (id).
# Stores the chunk's results and counts it in one step, once per chunk however many workers ran it (a chunk skipped,
# cancelled or expired counts with zeros); stamps completed_at when the last unit lands, and finished_at when every
# chunk has. Its first write (HSETNX) is refused when Redis is out of memory, and a script that has not written
# stops there: a chunk is counted if and only if its results were stored.
_CHUNK_DONE = (
    RELEASE_PART_LUA
    + PROGRESS_FIELDS_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HSETNX', KEYS[1], F.done .. ARGV[1], 1) == 0 then
    return 0
end
if ARGV[8] ~= '' then
    redis.call('SET', KEYS[2], ARGV[8], 'EXAT', ARGV[7])
end
if ARGV[9] ~= '' then
    redis.call('SET', KEYS[3], ARGV[9], 'EXAT', ARGV[7])
end
local chunks_done = redis.call('HINCRBY', KEYS[1], F.chunks_done, 1)
if chunks_done >= tonumber(redis.call('HGET', KEYS[1], F.chunks)) then
    redis.call('HSETNX', KEYS[1], F.finished_at, ARGV[5])
end
local completed = redis.call('HINCRBY', KEYS[1], F.completed, ARGV[2])
local failed = redis.call('HINCRBY', KEYS[1], F.failed, ARGV[3])
redis.call('HINCRBY', KEYS[1], F.prompt_tokens, ARGV[4])
if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], F.error .. ARGV[1], ARGV[6])
end
if completed + failed >= tonumber(redis.call('HGET', KEYS[1], F.total)) then
    redis.call('HSETNX', KEYS[1], F.completed_at, ARGV[5])
end
release_part(KEYS[4], KEYS[5], ARGV[11], ARGV[10])
return 1
"""
)
#: the same for a chunk that failed and stores no vectors, allowed past maxmemory (a few bytes), so that a full
#: Redis still learns that the chunk ended and its parent finishes with the failure named (Redis 7's script flags)
_CHUNK_FAILED_DESPITE_OOM = "#!lua flags=allow-oom\n" + _CHUNK_DONE

# KEYS: progress hash. ARGV: chunks taken off the queue, now (s). Marks the parent cancelled; the chunks withdrawn
# count as done (they will never run), and finished_at is stamped if no chunk is left running.
_CANCEL = (
    PROGRESS_FIELDS_LUA
    + """
redis.call('HSET', KEYS[1], F.cancelled, 1)
redis.call('HSETNX', KEYS[1], F.cancelling_at, ARGV[2])
local done = redis.call('HINCRBY', KEYS[1], F.chunks_done, ARGV[1])
if done >= tonumber(redis.call('HGET', KEYS[1], F.chunks)) then
    redis.call('HSETNX', KEYS[1], F.finished_at, ARGV[2])
end
return done
"""
)


def encode_vectors(vectors: np.ndarray) -> bytes:
    """A chunk's vectors as stored: float32 little-endian, row after row."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def decode_vectors(stored: bytes, rows: int) -> np.ndarray:
    return np.frombuffer(stored, dtype="<f4").reshape(rows, -1) if rows else np.empty((0, 0), dtype="<f4")


@dataclasses.dataclass(frozen=True, slots=True)
class PartResult:
    """How one request of a batch chunk ended: its prompt tokens, or the error it failed with."""

    prompt_tokens: int = 0
    error: TaskError | None = None
    #: its vectors' values as JSON floats take this many bytes (``openai_json.float_text_bytes``), so its line's
    #: length is known without its vectors; None when stored by a worker that did not measure it
    float_text_bytes: int | None = None


def _encode_parts(parts: list[PartResult]) -> bytes:
    packed: bytes = msgpack.packb(
        [
            [
                part.prompt_tokens,
                None if part.error is None else [part.error.kind.value, part.error.message, part.error.param],
                part.float_text_bytes,
            ]
            for part in parts
        ],
        use_bin_type=True,
    )
    return packed


def _decode_parts(data: bytes) -> list[PartResult]:
    return [
        PartResult(
            tokens,
            None if error is None else TaskError(ErrorKind(error[0]), error[1], error[2]),
            measured[0] if measured else None,
        )
        for tokens, error, *measured in msgpack.unpackb(data, raw=False)
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """Where a parent's chunks stand, in its units (inputs or requests)."""

    total: int
    chunks: int
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    chunks_done: int = 0
    started: bool = False
    cancelled: bool = False
    cancelling_at: int | None = None
    #: when the last unit was counted
    completed_at: int | None = None
    #: when the last chunk was counted (done, failed, skipped or withdrawn)
    finished_at: int | None = None
    #: chunk index -> why it failed
    chunk_errors: dict[int, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[bytes, bytes]) -> Progress | None:
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}

        def count(name: str) -> int:
            return int(fields.get(_FIELD[name], 0))

        def stamp(name: str) -> int | None:
            return int(fields[_FIELD[name]]) if _FIELD[name] in fields else None

        return cls(
            total=count("total"),
            chunks=count("chunks"),
            completed=count("completed"),
            failed=count("failed"),
            prompt_tokens=count("prompt_tokens"),
            chunks_done=count("chunks_done"),
            started=_FIELD["started"] in fields,
            cancelled=_FIELD["cancelled"] in fields,
            cancelling_at=stamp("cancelling_at"),
            completed_at=stamp("completed_at"),
            finished_at=stamp("finished_at"),
            chunk_errors={
                int(name.removeprefix(_FIELD["error"])): why
                for name, why in fields.items()
                if name.startswith(_FIELD["error"])
            },
        )


class ChunkStore:
    """Progress and results of the chunks of jobs and batches; the API and the workers both go through here."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._done = redis.register_script(_CHUNK_DONE)
        self._failed_despite_oom = redis.register_script(_CHUNK_FAILED_DESPITE_OOM)
        self._cancel = redis.register_script(_CANCEL)

    @staticmethod
    def create_in(pipe: Pipeline, parent_id: str, *, total: int, chunks: int, expire_at_s: int) -> None:
        """Queue in ``pipe`` the creation of a parent's progress: ``total`` units in ``chunks`` chunks."""
        key = keys.progress(parent_id)
        counts = {"total": total, "chunks": chunks, "completed": 0, "failed": 0, "chunks_done": 0}
        pipe.hset(key, mapping={_FIELD[name]: value for name, value in counts.items()})
        pipe.expireat(key, expire_at_s)

    async def records_with_progress(
        self, parents: list[tuple[str, str]]
    ) -> list[tuple[dict[str, str], Progress] | None]:
        """For each (record key, parent id): the parent's record hash (decoded) and its progress, all in one round
        trip; None where either is gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for record_key, parent_id in parents:
                pipe.hgetall(record_key)
                pipe.hgetall(keys.progress(parent_id))
            replies = await pipe.execute()
        found: list[tuple[dict[str, str], Progress] | None] = []
        for raw, raw_progress in zip(replies[::2], replies[1::2], strict=True):
            progress = Progress.parse(raw_progress)
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            found.append(None if not fields or progress is None else (fields, progress))
        return found

    async def progress(self, parent_id: str) -> Progress | None:
        raw = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(keys.progress(parent_id)))
        return Progress.parse(raw)

    async def cancel(self, parent_id: str, withdrawn_chunks: int = 0) -> None:
        """Mark the parent cancelled; chunks already claimed see it when they end, those not yet claimed at their
        claim. ``withdrawn_chunks``: chunks taken off the queue, counted as done."""
        await self._cancel(keys=[keys.progress(parent_id)], args=[withdrawn_chunks, int(time.time())])

    async def done_in(
        self,
        pipe: Pipeline | None,
        parent_id: str,
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
        """Store the chunk's vectors and its requests' outcomes (if any) and count it into its parent's progress,
        in one step: queued in ``pipe``, or run at once without one. ``input_bytes``: what its inputs held of the
        parent's reservation, given back. ``despite_oom``: for a chunk without vectors, even when Redis is out of
        memory."""
        if despite_oom and vectors is not None:
            raise ValueError("only a chunk without vectors may be written past maxmemory")
        script = self._failed_despite_oom if despite_oom else self._done
        results = [keys.chunk_vectors(parent_id, chunk), keys.chunk_parts(parent_id, chunk)]
        await script(
            keys=[keys.progress(parent_id), *results, *RESERVATION_KEYS],
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
                parent_id,
            ],
            client=pipe,
        )

    async def vectors(self, parent_id: str, chunks: list[int]) -> list[bytes | None]:
        if not chunks:
            return []
        values: list[bytes | None] = await self._redis.mget([keys.chunk_vectors(parent_id, c) for c in chunks])
        return values

    async def vector_bytes(self, parent_id: str, chunks: list[int]) -> list[int]:
        """How many bytes each chunk's stored vectors take (0: none), without reading them."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                pipe.strlen(keys.chunk_vectors(parent_id, chunk))
            lengths: list[int] = await pipe.execute()
        return lengths

    async def parts(self, parent_id: str, chunks: list[int]) -> list[list[PartResult] | None]:
        """Batch chunks' outcomes per request; None for a chunk that has none (not run, or lost)."""
        if not chunks:
            return []
        values: list[bytes | None] = await self._redis.mget([keys.chunk_parts(parent_id, c) for c in chunks])
        return [None if value is None else _decode_parts(value) for value in values]

    async def missing_vectors(self, parent_id: str, chunks: list[int]) -> list[int]:
        """Those of ``chunks`` whose vectors are gone from Redis (evicted or deleted): one command when none is."""
        return await self._missing([keys.chunk_vectors(parent_id, chunk) for chunk in chunks], chunks)

    async def missing_parts(self, parent_id: str, chunks: list[int]) -> list[int]:
        """Those of a batch's ``chunks`` whose requests' outcomes are gone from Redis."""
        return await self._missing([keys.chunk_parts(parent_id, chunk) for chunk in chunks], chunks)

    async def _missing(self, chunk_keys: list[str], chunks: list[int]) -> list[int]:
        if not chunk_keys or await self._redis.exists(*chunk_keys) == len(chunk_keys):
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in chunk_keys:
                pipe.exists(key)
            found = await pipe.execute()
        return [chunk for chunk, present in zip(chunks, found, strict=True) if not present]

    @staticmethod
    def delete_in(pipe: Pipeline, parent_id: str, chunks: int) -> None:
        """Queue in ``pipe`` the deletion of a parent's progress and its first ``chunks`` chunks' results."""
        stored = [
            key for c in range(chunks) for key in (keys.chunk_vectors(parent_id, c), keys.chunk_parts(parent_id, c))
        ]
        pipe.delete(keys.progress(parent_id), *stored)
