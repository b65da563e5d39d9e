"""The life of a ``EmbedChunk`` in a worker: decoded, embedded, its results stored and counted (``shared.chunks``).

A failure that may pass (``RETRYABLE``) gives the chunk back to the queue, up to ``max_attempts`` runs; any other
fails it, named in its parent's errors. A chunk is counted once (``metrics.count_job``), when what it ended as is
stored. Never raises. Chunks that end together are stored together: one pipeline writes their results, then their
arq jobs end and their texts are released.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from shared.chunks import ChunkStore, PartResult, encode_vectors
from shared.clock import now_ms
from shared.coalesce import Coalescer
from shared.errors import ErrorKind, ProtocolError, ServiceError
from shared.job_queue import FinishedJob, JobQueue
from shared.protocol import EmbedChunk, TaskError, decode_embedding
from shared.sparse import encode_sparse
from shared.storage import input_bytes
from worker import metrics
from worker.dead_letter import DeadLetters
from worker.pipeline import EmbeddingPipeline
from worker.sparse_pipeline import SparsePipeline

log = logging.getLogger(__name__)

#: failures worth running a chunk again for; the others (bad input, unknown model) would fail again
RETRYABLE = frozenset(
    {ErrorKind.INTERNAL, ErrorKind.MODEL_UNAVAILABLE, ErrorKind.SERVICE_UNAVAILABLE, ErrorKind.TIMEOUT}
)

#: pauses between tries to store a chunk's results while Redis is out of memory (doubling, jittered)
STORE_BACKOFF_S = 0.5
STORE_BACKOFF_MAX_S = 8.0


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What a finished chunk writes into its parent."""

    job: EmbedChunk
    #: dense rows, or a sparse model's rows already as stored (``shared.sparse.encode_sparse``)
    vectors: np.ndarray | bytes | None = None
    #: a batch chunk's outcome per request
    parts: list[PartResult] | None = None
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    error: str = ""
    #: written even when Redis is out of memory (a failure, with no vectors: a few bytes)
    despite_oom: bool = False


def failed_outcome(job: EmbedChunk, error: TaskError, *, despite_oom: bool = False) -> ChunkOutcome:
    """Every input of the chunk, or in a batch chunk every request, failed with ``error``."""
    if job.parts is None:
        return ChunkOutcome(job, failed=len(job.inputs), error=error.message, despite_oom=despite_oom)
    failures = [PartResult(error=error)] * len(job.parts)
    return ChunkOutcome(job, parts=failures, failed=len(job.parts), error=error.message, despite_oom=despite_oom)


class ChunkJobs:
    def __init__(
        self,
        pipeline: EmbeddingPipeline,
        redis: Redis,
        queue: JobQueue,
        dead_letters: DeadLetters,
        *,
        max_attempts: int,
        store_attempts: int,
        sparse: SparsePipeline | None = None,
    ) -> None:
        """``sparse``: chunks for a sparse model (default: on the pipeline's models)."""
        self._pipeline = pipeline
        self._sparse = sparse or SparsePipeline(pipeline.registry)
        self._redis = redis
        self._queue = queue
        self._chunks = ChunkStore(redis)
        self._dead_letters = dead_letters
        self._max_attempts = max_attempts
        self._store_attempts = store_attempts
        self._finish: Coalescer[tuple[FinishedJob, ChunkOutcome | None], None] = Coalescer(
            self._finish_many, "finish-chunks"
        )

    async def handle(self, queue_id: str, message: bytes, attempt: int = 1, *, cancelled: bool = False) -> None:
        """Run one chunk. ``cancelled``: its parent was cancelled before the claim (which says so)."""
        try:
            job = decode_embedding(message, EmbedChunk)
        except ProtocolError as exc:
            await self._dead_letters.keep(queue_id, message, exc)
            await self._finish.add((FinishedJob(queue_id), None))
            return
        if cancelled or now_ms() > job.deadline_ms:
            # counted with nothing done, so a cancelled batch learns that this chunk will not run
            await self._store(queue_id, ChunkOutcome(job), counted_as=None)
            return
        if attempt > self._max_attempts:
            reason = f"this chunk failed {attempt - 1} times; it was abandoned"
            await self._fail(queue_id, job, ServiceError(ErrorKind.INTERNAL, reason), counted_as="abandoned")
            return
        try:
            outcome = await self._run(job)
        except ServiceError as exc:
            error = exc
        except Exception:
            log.exception("chunk %s failed", queue_id)
            error = ServiceError(ErrorKind.INTERNAL, "the worker failed to process this chunk")
        else:
            await self._store(queue_id, outcome, counted_as="chunk")
            return
        if error.kind in RETRYABLE and attempt < self._max_attempts:
            log.warning("chunk %s failed (%s); it goes back to the queue", queue_id, error.message)
            await self._queue.unclaim(queue_id, now_ms())
            return
        await self._fail(queue_id, job, error, counted_as="chunk_failed")

    async def _run(self, job: EmbedChunk) -> ChunkOutcome:
        if await self._sparse.serves(job):
            if job.parts is not None:
                message = "the Batch API does not serve sparse models; use /v1/embeddings or /v1/embeddings/jobs"
                raise ServiceError(ErrorKind.INVALID_REQUEST, message, "model")
            sparse = await self._sparse.embed_sparse(job, urgent=False)
            return ChunkOutcome(
                job, vectors=encode_sparse(sparse.rows), completed=len(job.inputs), prompt_tokens=sparse.prompt_tokens
            )
        if job.parts is None:
            embedded = await self._pipeline.embed(job, urgent=False)
            return ChunkOutcome(
                job, vectors=embedded.vectors, completed=len(job.inputs), prompt_tokens=embedded.prompt_tokens
            )
        vectors, parts = await self._pipeline.embed_parts(job, job.parts)
        failed = sum(part.error is not None for part in parts)
        return ChunkOutcome(
            job,
            vectors=vectors,
            parts=parts,
            completed=len(parts) - failed,
            failed=failed,
            prompt_tokens=sum(part.prompt_tokens for part in parts),
        )

    async def _fail(
        self, queue_id: str, job: EmbedChunk, error: ServiceError, *, counted_as: metrics.JobOutcome
    ) -> None:
        """The whole chunk failed: every input, or in a batch chunk every request, with ``error``."""
        failure = failed_outcome(job, TaskError(error.kind, error.message, error.param))
        await self._store(queue_id, failure, counted_as=counted_as)

    async def _finish_many(
        self, batch: list[tuple[tuple[FinishedJob, ChunkOutcome | None], asyncio.Future[None]]]
    ) -> None:
        """Store the chunks' results first (each with its count, in one step), then end the arq jobs of those
        stored. A chunk whose results Redis refuses (out of memory) is not ended: its future fails with the
        OutOfMemoryError and the chunk stays held, to be written again (``_store``)."""
        writes = [(item, future, outcome) for item, future in batch if (outcome := item[1]) is not None]
        stored = [(item, future) for item, future in batch if item[1] is None]
        if writes:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, _, outcome in writes:
                    job = outcome.job
                    await self._chunks.done_in(
                        pipe,
                        job.parent_job,
                        job.chunk,
                        vectors=_stored(outcome.vectors),
                        parts=outcome.parts,
                        completed=outcome.completed,
                        failed=outcome.failed,
                        prompt_tokens=outcome.prompt_tokens,
                        expires_at_s=job.results_expire_at_s or job.deadline_ms // 1000,
                        error=outcome.error,
                        input_bytes=input_bytes(job.inputs),
                        despite_oom=outcome.despite_oom,
                    )
                results = await pipe.execute(raise_on_error=False)
            for (item, future, _), result in zip(writes, results, strict=True):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    stored.append((item, future))
        if stored:
            await self._queue.finish([finished for (finished, _), _ in stored])
        for _, future in stored:
            if not future.done():
                future.set_result(None)

    async def _store(self, queue_id: str, outcome: ChunkOutcome, *, counted_as: metrics.JobOutcome | None) -> None:
        """Store a finished chunk's results, then count it ``counted_as`` (None: not counted); while Redis is out
        of memory, wait (growing, jittered pauses) and try again, ``store_attempts`` times; then the chunk fails,
        named in its parent's errors, and is counted as failed (or as abandoned, if it was)."""
        job = outcome.job
        finished = FinishedJob(queue_id)
        for attempt in range(self._store_attempts):
            try:
                await self._finish.add((finished, outcome))
            except OutOfMemoryError:
                pause = min(STORE_BACKOFF_MAX_S, STORE_BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning(
                    "chunk %s: Redis is out of memory (attempt %d of %d); storing it again in %.1fs",
                    *(queue_id, attempt + 1, self._store_attempts, pause),
                )
                await asyncio.sleep(pause)
            else:
                if counted_as is not None:
                    metrics.count_job(counted_as)
                return
        log.error("chunk %s: Redis stayed out of memory; the chunk fails", queue_id)
        if outcome.vectors is None:  # a failure already: it is written as it is
            failure = dataclasses.replace(outcome, despite_oom=True)
        else:
            reason = "the result store was full: this chunk's vectors could not be stored"
            failure = failed_outcome(job, TaskError(ErrorKind.INSUFFICIENT_STORAGE, reason), despite_oom=True)
        await self._finish.add((finished, failure))
        metrics.count_job("abandoned" if counted_as == "abandoned" else "chunk_failed")


def _stored(vectors: np.ndarray | bytes | None) -> bytes | None:
    """A chunk's vectors as stored: dense rows as float32, a sparse model's as they came."""
    if vectors is None or isinstance(vectors, bytes):
        return vectors
    return encode_vectors(vectors)
