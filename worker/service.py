"""What a worker does with one job from either queue: decode, tokenize, batch, encode, and finish it.

- A ``SyncJob`` is answered with a ``SyncReply`` (its ``data`` array rendered here) on the API's reply list.
- A ``ChunkJob`` has its vectors stored and is counted into its job's progress; a failure that may pass gives
  it back to the queue, up to ``max_attempts`` runs.

Jobs that finish together (a batch) are finished together (``shared.coalesce``): one pipeline that ends their arq
jobs, releases their texts from the backlog and, for chunks, writes their results.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import OutOfMemoryError, RedisError

from shared import keys
from shared.chunks import JobStore, PartResult
from shared.clock import now_ms
from shared.coalesce import Coalescer
from shared.errors import ErrorKind, ProtocolError, ServiceError
from shared.job_queue import FinishedJob, JobQueue
from shared.openai_json import data_array
from shared.protocol import (
    ChunkJob,
    EmbedError,
    EmbedJob,
    InputKind,
    SyncJob,
    SyncReply,
    decode_job,
    encode_reply,
)
from shared.storage import input_bytes
from worker import metrics, openai_tokens
from worker.batcher import BatchStats
from worker.models.prompts import resolve_prompt
from worker.models.registry import Encoder, LoadedModel, ModelRegistry

log = logging.getLogger(__name__)

#: seconds an unread reply list lives (its API process may have died)
REPLY_TTL_S = 60

#: failures worth running a chunk again for; the others (bad input, unknown model) would fail again
RETRYABLE = frozenset(
    {ErrorKind.INTERNAL, ErrorKind.MODEL_UNAVAILABLE, ErrorKind.SERVICE_UNAVAILABLE, ErrorKind.TIMEOUT}
)

#: pauses between tries to store a chunk's results while Redis is out of memory (doubling, jittered)
STORE_BACKOFF_S = 0.5
STORE_BACKOFF_MAX_S = 8.0

#: entries kept in the dead-letter list
DEAD_LETTER_CAP = 1000

#: jobs with fewer characters than this are tokenized on the event loop; a thread hop costs more than that
INLINE_TOKENIZE_CHARS = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Embedded:
    """A job's vectors (float32, one row per input), what the model read, and the batch that served it."""

    vectors: np.ndarray
    prompt_tokens: int
    stats: BatchStats


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What a finished chunk writes into its job."""

    job: ChunkJob
    vectors: np.ndarray | None = None
    #: a batch chunk's outcome per request
    parts: list[PartResult] | None = None
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    error: str = ""
    #: written even when Redis is out of memory (a failure, with no vectors: a few bytes)
    despite_oom: bool = False


def _failed_outcome(job: ChunkJob, error: EmbedError, *, despite_oom: bool = False) -> ChunkOutcome:
    """Every input of the chunk, or in a batch chunk every request, failed with ``error``."""
    if job.parts is None:
        return ChunkOutcome(job, failed=len(job.inputs), error=error.message, despite_oom=despite_oom)
    failures = [PartResult(error=error)] * len(job.parts)
    return ChunkOutcome(job, parts=failures, failed=len(job.parts), error=error.message, despite_oom=despite_oom)


class EmbeddingService:
    def __init__(
        self,
        registry: ModelRegistry,
        redis: Redis,
        worker_id: str,
        *,
        max_attempts: int,
        max_tokens: int = 1 << 62,
        openai_token_ids: bool = False,
        store_attempts: int = 6,
    ) -> None:
        """``openai_token_ids``: token-id input is OpenAI's cl100k_base ids (``TOKEN_IDS=openai``), not the model's."""
        self.registry = registry
        self.worker_id = worker_id
        self._redis = redis
        self._sync_queue = JobQueue.sync(redis)
        self._chunk_queue = JobQueue.chunks(redis)
        self._jobs = JobStore(redis)
        self._finish_sync: Coalescer[tuple[FinishedJob, None], None] = Coalescer(self._finish_sync_batch, "finish")
        self._finish_chunks: Coalescer[tuple[FinishedJob, ChunkOutcome | None], None] = Coalescer(
            self._finish_chunk_batch, "finish-chunks"
        )
        self._max_attempts = max_attempts
        self._store_attempts = store_attempts
        self._max_tokens = max_tokens
        self._openai_token_ids = openai_token_ids
        self.largest_batch = (0, 0)
        #: jobs answered, skipped because their deadline had passed, and given up after too many attempts
        self.counters = {"answered": 0, "expired": 0, "abandoned": 0}

    async def handle(self, queue_id: str, message: bytes, attempt: int = 1) -> None:
        """Run one synchronous job and answer it; never raises, so work that was answered is not run again.

        ``attempt`` counts runs of this job: more than one means a worker died while holding it.
        """
        try:
            job = decode_job(message, SyncJob)
        except ProtocolError as exc:
            await self._reject_undecodable(queue_id, message, exc)
            return
        if now_ms() > job.deadline_ms:
            log.info("job %s expired before it started; skipped", job.request_id)
            self.counters["expired"] += 1
            metrics.JOBS.labels("expired").inc()
            await self._finish_sync.add((FinishedJob(queue_id, len(job.inputs)), None))
            return
        if attempt > self._max_attempts:
            log.error("job %s was attempted %d times; giving up", job.request_id, attempt - 1)
            self.counters["abandoned"] += 1
            metrics.JOBS.labels("abandoned").inc()
            reason = f"processing this request failed {attempt - 1} times; it was abandoned"
            await self._answer(queue_id, job, self._error_reply(job, ErrorKind.INTERNAL, reason))
            return
        started_ms = now_ms()
        queue_ms = float(started_ms - job.enqueued_ms)
        metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, queue_ms) / 1000)
        try:
            embedded = await self._embed(job, deadline_ms=job.deadline_ms)
        except ServiceError as exc:
            reply = self._error_reply(job, exc.kind, exc.message, exc.param, queue_ms)
        except TimeoutError:
            reason = "the request's deadline passed before it was encoded"
            reply = self._error_reply(job, ErrorKind.TIMEOUT, reason, queue_ms=queue_ms)
        except Exception:
            log.exception("job %s failed", job.request_id)
            reason = "the worker failed to process this request"
            reply = self._error_reply(job, ErrorKind.INTERNAL, reason, queue_ms=queue_ms)
        else:
            stats = embedded.stats
            reply = SyncReply(
                job.request_id,
                data=data_array(embedded.vectors, job.encoding_format),
                prompt_tokens=embedded.prompt_tokens,
                worker_id=self.worker_id,
                queue_ms=queue_ms,
                inference_ms=stats.inference_ms,
                batch_size=stats.batch_size,
                batch_requests=stats.batch_requests,
            )
        await self._answer(queue_id, job, reply)
        self.counters["answered"] += 1
        metrics.JOBS.labels("answered").inc()
        if reply.error is not None:
            metrics.ERRORS.labels(reply.error.kind.value).inc()

    async def handle_chunk(self, queue_id: str, message: bytes, attempt: int = 1) -> None:
        """Run one chunk of an asynchronous job: store its vectors and count its progress; give it back to the queue
        on a failure that may pass (``RETRYABLE``), until its ``max_attempts``-th run; never raises."""
        try:
            job = decode_job(message, ChunkJob)
        except ProtocolError as exc:
            await self._dead_letter(queue_id, message, exc)
            await self._finish_chunks.add((FinishedJob(queue_id, 0), None))
            return
        if now_ms() > job.deadline_ms or await self._jobs.is_cancelled(job.parent_job):
            # counted with nothing done, so a cancelled batch learns that this chunk will not run
            await self._store_chunk(queue_id, ChunkOutcome(job))
            return
        if attempt > self._max_attempts:
            self.counters["abandoned"] += 1
            reason = f"this chunk failed {attempt - 1} times; it was abandoned"
            await self._chunk_failed(queue_id, job, ServiceError(ErrorKind.INTERNAL, reason))
            return
        await self._jobs.mark_started(job.parent_job, self.worker_id)
        try:
            outcome = await self._run_chunk(job)
        except ServiceError as exc:
            error = exc
        except Exception:
            log.exception("chunk %s failed", queue_id)
            error = ServiceError(ErrorKind.INTERNAL, "the worker failed to process this chunk")
        else:
            self.counters["answered"] += 1
            metrics.JOBS.labels("chunk").inc()
            await self._store_chunk(queue_id, outcome)
            return
        if error.kind in RETRYABLE and attempt < self._max_attempts:
            log.warning("chunk %s failed (%s); it goes back to the queue", queue_id, error.message)
            await self._chunk_queue.unclaim(queue_id, now_ms())
            return
        await self._chunk_failed(queue_id, job, error)

    async def _run_chunk(self, job: ChunkJob) -> ChunkOutcome:
        if job.parts is None:
            embedded = await self._embed(job, urgent=False)
            return ChunkOutcome(
                job, vectors=embedded.vectors, completed=len(job.inputs), prompt_tokens=embedded.prompt_tokens
            )
        vectors, parts = await self._embed_parts(job, job.parts)
        failed = sum(part.error is not None for part in parts)
        return ChunkOutcome(
            job,
            vectors=vectors,
            parts=parts,
            completed=len(parts) - failed,
            failed=failed,
            prompt_tokens=sum(part.prompt_tokens for part in parts),
        )

    async def _chunk_failed(self, queue_id: str, job: ChunkJob, error: ServiceError) -> None:
        """The whole chunk failed: every input, or in a batch chunk every request, with ``error``."""
        metrics.JOBS.labels("chunk_failed").inc()
        outcome = _failed_outcome(job, EmbedError(error.kind, error.message, error.param))
        await self._store_chunk(queue_id, outcome)

    async def _model_for(self, job: EmbedJob, deadline_ms: int | None) -> tuple[LoadedModel, str]:
        """The job's model, loaded, and the prompt its options choose; ServiceError if they do not fit the model."""
        timeout_s = None if deadline_ms is None else (deadline_ms - now_ms()) / 1000
        model = await self.registry.get(job.model, timeout_s)
        encoder = model.encoder
        if job.dimensions is not None and not 0 < job.dimensions <= encoder.dimension:
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"dimensions must be between 1 and {encoder.dimension} for this model",
                "dimensions",
            )
        return model, resolve_prompt(encoder.prompts, encoder.default_prompt_name, job.prompt_name, job.input_type)

    async def _embed(self, job: EmbedJob, *, urgent: bool = True, deadline_ms: int | None = None) -> Embedded:
        """``deadline_ms``: past it, a job still waiting for its model to load or for a batch fails with a timeout;
        one already in a running batch finishes with it."""
        model, prompt = await self._model_for(job, deadline_ms)
        if sum(map(len, job.inputs)) < INLINE_TOKENIZE_CHARS:
            sequences = self._sequences(model.encoder, job, job.inputs, prompt)
        else:
            sequences = await asyncio.to_thread(self._sequences, model.encoder, job, job.inputs, prompt)
        return await self._encode(model, job, sequences, prompt, urgent=urgent, deadline_ms=deadline_ms)

    async def _embed_parts(self, job: ChunkJob, parts: list[int]) -> tuple[np.ndarray | None, list[PartResult]]:
        """A batch chunk: each request (``parts``) is tokenized and checked alone, so one that cannot be encoded
        fails by itself; the others are encoded together. Rows of the requests that succeeded, in order."""
        model, prompt = await self._model_for(job, None)
        encoder = model.encoder

        def tokenize() -> list[list[list[int]] | ServiceError]:
            tokenized: list[list[list[int]] | ServiceError] = []
            for start, end in itertools.pairwise(itertools.accumulate(parts, initial=0)):
                try:
                    tokenized.append(self._sequences(encoder, job, job.inputs[start:end], prompt))
                except ServiceError as exc:
                    tokenized.append(exc)
            return tokenized

        small = sum(map(len, job.inputs)) < INLINE_TOKENIZE_CHARS
        tokenized = tokenize() if small else await asyncio.to_thread(tokenize)
        sequences = [sequence for part in tokenized if isinstance(part, list) for sequence in part]
        vectors = None
        if sequences:
            vectors = (await self._encode(model, job, sequences, prompt, urgent=False, deadline_ms=None)).vectors
        results = [
            PartResult(error=EmbedError(part.kind, part.message, part.param))
            if isinstance(part, ServiceError)
            else PartResult(_prompt_tokens(encoder, part))
            for part in tokenized
        ]
        return vectors, results

    def _sequences(self, encoder: Encoder, job: EmbedJob, inputs: list[Any], prompt: str) -> list[list[int]]:
        """One request's model inputs, refused if they hold more tokens than a request may."""
        sequences = _model_inputs(encoder, job.input_kind, inputs, prompt, job.truncate, self._openai_token_ids)
        tokens = sum(map(len, sequences))
        if tokens > self._max_tokens:
            message = f"this request has {tokens} tokens; at most {self._max_tokens} are allowed in one request"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "input")
        return sequences

    async def _encode(
        self,
        model: LoadedModel,
        job: EmbedJob,
        sequences: list[list[int]],
        prompt: str,
        *,
        urgent: bool,
        deadline_ms: int | None,
    ) -> Embedded:
        """Encode through the model's batcher, then cut to ``dimensions`` and normalize as the job asks."""
        encoder = model.encoder
        group = encoder.prompt_length(prompt)  # sequences whose pooling leaves out prompts of one length batch together
        encoded = await model.batcher.submit(sequences, group=group, urgent=urgent, deadline_ms=deadline_ms)
        vectors = encoded.vectors
        if job.dimensions is not None and job.dimensions < vectors.shape[1]:
            vectors = vectors[:, : job.dimensions]
        if encoder.normalizes if job.normalize is None else job.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        stats = encoded.stats
        if stats.batch_size > self.largest_batch[0]:
            self.largest_batch = (stats.batch_size, stats.batch_requests)
        return Embedded(vectors.astype(np.float32, copy=False), _prompt_tokens(encoder, sequences), stats)

    def _error_reply(
        self, job: SyncJob, kind: ErrorKind, message: str, param: str | None = None, queue_ms: float = 0.0
    ) -> SyncReply:
        error = EmbedError(kind, message, param)
        return SyncReply(job.request_id, error=error, worker_id=self.worker_id, queue_ms=queue_ms)

    async def _answer(self, queue_id: str, job: SyncJob, reply: SyncReply) -> None:
        await self._finish_sync.add((FinishedJob(queue_id, len(job.inputs), job.reply_to, encode_reply(reply)), None))

    async def _finish_sync_batch(self, batch: list[tuple[tuple[FinishedJob, None], asyncio.Future[None]]]) -> None:
        await self._sync_queue.finish([finished for (finished, _), _ in batch], REPLY_TTL_S)
        _settle(batch)

    async def _finish_chunk_batch(
        self, batch: list[tuple[tuple[FinishedJob, ChunkOutcome | None], asyncio.Future[None]]]
    ) -> None:
        """Store the chunks' results first (each with its count, in one step), then end the arq jobs of those
        stored. A chunk whose results Redis refuses (out of memory) is not ended: its future fails with the
        OutOfMemoryError and the chunk stays held, to be written again (``_store_chunk``)."""
        writes = [(item, future, outcome) for item, future in batch if (outcome := item[1]) is not None]
        stored = [(item, future) for item, future in batch if item[1] is None]
        if writes:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, _, outcome in writes:
                    await self._write_chunk_in(pipe, outcome)
                results = await pipe.execute(raise_on_error=False)
            for (item, future, _), result in zip(writes, results, strict=True):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    stored.append((item, future))
        if stored:
            await self._chunk_queue.finish([finished for (finished, _), _ in stored], REPLY_TTL_S)
        _settle(stored)

    async def _write_chunk_in(self, pipe: Pipeline, outcome: ChunkOutcome) -> None:
        job = outcome.job
        vectors = None if outcome.vectors is None else np.ascontiguousarray(outcome.vectors, dtype="<f4").tobytes()
        await self._jobs.chunk_done_in(
            pipe,
            job.parent_job,
            job.chunk,
            vectors=vectors,
            parts=outcome.parts,
            completed=outcome.completed,
            failed=outcome.failed,
            prompt_tokens=outcome.prompt_tokens,
            expires_at_s=job.results_expire_s or job.deadline_ms // 1000,
            error=outcome.error,
            input_bytes=input_bytes(job.inputs),
            despite_oom=outcome.despite_oom,
        )

    async def _store_chunk(self, queue_id: str, outcome: ChunkOutcome) -> None:
        """Store a finished chunk's results; while Redis is out of memory, wait (growing, jittered pauses) and try
        again, ``store_attempts`` times; then the chunk fails, named in its job's errors."""
        job = outcome.job
        finished = FinishedJob(queue_id, len(job.inputs))
        for attempt in range(self._store_attempts):
            try:
                await self._finish_chunks.add((finished, outcome))
                return
            except OutOfMemoryError:
                pause = min(STORE_BACKOFF_MAX_S, STORE_BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning(
                    "chunk %s: Redis is out of memory (attempt %d of %d); storing it again in %.1fs",
                    *(queue_id, attempt + 1, self._store_attempts, pause),
                )
                await asyncio.sleep(pause)
        log.error("chunk %s: Redis stayed out of memory; the chunk fails", queue_id)
        metrics.JOBS.labels("chunk_failed").inc()
        if outcome.vectors is None:  # a failure already: it is written as it is
            failure = dataclasses.replace(outcome, despite_oom=True)
        else:
            reason = "the result store was full: this chunk's vectors could not be stored"
            failure = _failed_outcome(job, EmbedError(ErrorKind.INSUFFICIENT_STORAGE, reason), despite_oom=True)
        await self._finish_chunks.add((finished, failure))

    async def _dead_letter(self, queue_id: str, message: bytes, exc: ProtocolError) -> None:
        """Move a queue entry no worker can read aside, with why, where an operator can look at it."""
        log.error("queue entry %s cannot be read (%s); moved to %s", queue_id, exc.message, keys.DEAD_LETTER)
        metrics.JOBS.labels("dead_letter").inc()
        entry = msgpack.packb(
            {"id": queue_id, "reason": exc.message, "worker": self.worker_id, "at_ms": now_ms(), "payload": message},
            use_bin_type=True,
        )
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(keys.DEAD_LETTER, entry)
                pipe.ltrim(keys.DEAD_LETTER, 0, DEAD_LETTER_CAP - 1)
                await pipe.execute()
        except (RedisError, OSError) as redis_error:
            log.warning("could not keep queue entry %s aside: %r", queue_id, redis_error)

    async def _reject_undecodable(self, queue_id: str, message: bytes, exc: ProtocolError) -> None:
        """Move aside a job we cannot read and answer it, if it at least says where to answer; never crash on it."""
        await self._dead_letter(queue_id, message, exc)
        reply_to = reply = None
        with contextlib.suppress(Exception):
            fields = msgpack.unpackb(message, raw=False)
            error = EmbedError(ErrorKind.INTERNAL, "the worker could not decode this job")
            reply = encode_reply(SyncReply(str(fields["request_id"]), error=error))
            reply_to = str(fields["reply_to"])
        await self._finish_sync.add((FinishedJob(queue_id, 0, reply_to, reply), None))


def _settle(batch: Sequence[tuple[object, asyncio.Future[None]]]) -> None:
    for _, future in batch:
        if not future.done():
            future.set_result(None)


def _prompt_tokens(encoder: Encoder, sequences: list[list[int]]) -> int:
    """What the model read of the client's inputs and prompts, without its special tokens."""
    return sum(map(len, sequences)) - len(sequences) * encoder.special_token_count


def _model_inputs(
    encoder: Encoder, input_kind: InputKind, inputs: list[Any], prompt: str, truncate: bool, openai_token_ids: bool
) -> list[list[int]]:
    """Token ids with the prompt and special tokens, cut or refused per ``truncate``. CPU work: large jobs run
    it in a thread. A text and its prompt are tokenized as one string, as sentence-transformers does.
    ``openai_token_ids``: token-id input is cl100k_base ids, decoded to text first."""
    texts: Sequence[str] | None = inputs if input_kind == "text" else None
    if texts is None and openai_token_ids:
        texts = openai_tokens.decode(inputs)
    if texts is not None:
        token_ids: Sequence[list[int]] = encoder.tokenize([prompt + text for text in texts])
    else:
        encoder.check_token_ids(inputs)
        prompt_ids = encoder.tokenize([prompt])[0] if prompt else []
        token_ids = [prompt_ids + list(ids) for ids in inputs]
    return [encoder.prepare(list(ids), truncate=truncate, param="input") for ids in token_ids]
