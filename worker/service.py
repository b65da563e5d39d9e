"""What a worker does with one embedding job: decode, tokenize, batch, encode, publish the result.

Results of jobs that finish together (a batch) are published together: one Redis round trip for all of them,
which also drops the jobs from arq's keys and releases their texts from the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Sequence

import msgpack
import numpy as np
from redis.asyncio import Redis

from shared.arq_batch import ArqBatch, FinishedJob
from shared.coalesce import Coalescer
from shared.errors import ErrorKind, ProtocolError, ServiceError
from shared.jobs import JobStore
from shared.openai_json import data_array
from shared.protocol import EmbedError, EmbedJob, EmbedResult, decode_job, encode_result
from shared.workers import now_ms
from worker import metrics
from worker.registry import Encoder, ModelRegistry

log = logging.getLogger(__name__)

#: seconds an unread reply list lives (its API process may have died)
REPLY_TTL_S = 60


#: failures worth running a chunk again for
_RETRYABLE = {ErrorKind.INTERNAL, ErrorKind.MODEL_UNAVAILABLE, ErrorKind.SERVICE_UNAVAILABLE, ErrorKind.TIMEOUT}

#: jobs with fewer characters than this are tokenized on the event loop; a thread hop costs more than that
_INLINE_TOKENIZE_CHARS = 4096


class EmbeddingService:
    def __init__(
        self, registry: ModelRegistry, redis: Redis, worker_id: str, *, max_attempts: int, max_tokens: int = 1 << 62
    ) -> None:
        self.registry = registry
        self._arq = ArqBatch.sync(redis)
        self._finisher: Coalescer[FinishedJob, None] = Coalescer(functools.partial(self._finish, self._arq))
        self._chunk_arq = ArqBatch.chunks(redis)
        self._chunk_finisher: Coalescer[FinishedJob, None] = Coalescer(functools.partial(self._finish, self._chunk_arq))
        self._jobs = JobStore(redis)
        self._max_attempts = max_attempts
        self._max_tokens = max_tokens
        self.worker_id = worker_id
        self.largest_batch = (0, 0)
        #: jobs answered, skipped because their deadline had passed, and given up after too many attempts
        self.counters = {"answered": 0, "expired": 0, "abandoned": 0}

    async def handle(self, job_id: str, message: bytes, attempt: int = 1) -> None:
        """Run one arq job and publish its result; never raises, so work that was answered is not retried.

        ``attempt`` counts runs of this job: more than one means a worker died while holding it.
        """
        try:
            job = decode_job(message)
        except ProtocolError as exc:
            await self._reject_undecodable(job_id, message, exc)
            return
        if now_ms() > job.deadline_ms:
            log.info("job %s expired before it started; skipped", job.request_id)
            self.counters["expired"] += 1
            metrics.JOBS.labels("expired").inc()
            await self._finisher.submit(FinishedJob(job_id, None, None, len(job.inputs)))
            return
        if attempt > self._max_attempts:
            log.error("job %s was attempted %d times; giving up", job.request_id, attempt - 1)
            self.counters["abandoned"] += 1
            metrics.JOBS.labels("abandoned").inc()
            reason = f"processing this request failed {attempt - 1} times; it was abandoned"
            await self._publish(job_id, job, self._error(job, ErrorKind.INTERNAL, reason))
            return
        started_ms = now_ms()
        metrics.QUEUE_WAIT_SECONDS.observe(max(0, started_ms - job.enqueued_ms) / 1000)
        try:
            result = await self._embed(job, deadline_ms=job.deadline_ms)
        except ServiceError as exc:
            result = self._error(job, exc.kind, exc.message, exc.param)
        except TimeoutError:
            result = self._error(job, ErrorKind.TIMEOUT, "the request's deadline passed before it was encoded")
        except Exception:
            log.exception("job %s failed", job.request_id)
            result = self._error(job, ErrorKind.INTERNAL, "the worker failed to process this request")
        vectors, data = result.vectors, result.data
        if result.error is None:  # the API only frames the data array
            vectors, data = b"", data_array(result.vectors, result.count, result.dim, job.encoding_format)
        result = dataclasses.replace(result, queue_ms=float(started_ms - job.enqueued_ms), vectors=vectors, data=data)
        await self._publish(job_id, job, result)
        self.counters["answered"] += 1
        metrics.JOBS.labels("answered").inc()
        if result.error is not None:
            metrics.ERRORS.labels(result.error.kind.value).inc()

    async def handle_chunk(self, arq_job_id: str, message: bytes, attempt: int = 1) -> None:
        """Run one chunk of an asynchronous job: store its vectors and count its progress; retry it (give it
        back to the queue) on a failure that may pass, a bounded number of times; never raises."""
        try:
            job = decode_job(message)
        except ProtocolError as exc:
            log.error("undecodable chunk %s: %s", arq_job_id, exc.message)
            await self._chunk_finisher.submit(FinishedJob(arq_job_id, None, None, 0))
            return
        owner = job.job_id or ""
        if now_ms() > job.deadline_ms or await self._jobs.is_cancelled(owner):
            await self._chunk_finisher.submit(FinishedJob(arq_job_id, None, None, len(job.inputs)))
            return
        if attempt > self._max_attempts:
            self.counters["abandoned"] += 1
            await self._chunk_failed(arq_job_id, job, f"this chunk failed {attempt - 1} times; it was abandoned")
            return
        await self._jobs.mark_started(owner, self.worker_id)
        try:
            result = await self._embed(job, urgent=False)
        except ServiceError as exc:
            error = exc
        except Exception:
            log.exception("chunk %s failed", arq_job_id)
            error = ServiceError(ErrorKind.INTERNAL, "the worker failed to process this chunk")
        else:
            self.counters["answered"] += 1
            metrics.JOBS.labels("chunk").inc()
            await self._finish_chunk(
                arq_job_id, job, vectors=result.vectors, completed=result.count, prompt_tokens=result.prompt_tokens
            )
            return
        if error.kind in _RETRYABLE and attempt < self._max_attempts:
            log.warning("chunk %s failed (%s); it goes back to the queue", arq_job_id, error.message)
            await self._chunk_arq.unclaim(arq_job_id, now_ms())
            return
        await self._chunk_failed(arq_job_id, job, error.message)

    async def _chunk_failed(self, arq_job_id: str, job: EmbedJob, reason: str) -> None:
        metrics.JOBS.labels("chunk_failed").inc()
        await self._finish_chunk(arq_job_id, job, failed=len(job.inputs), error=reason)

    async def _finish_chunk(
        self,
        arq_job_id: str,
        job: EmbedJob,
        *,
        vectors: bytes | None = None,
        completed: int = 0,
        failed: int = 0,
        prompt_tokens: int = 0,
        error: str = "",
    ) -> None:
        """Finish the chunk's arq job, storing its vectors and counting it into its job, in one round trip."""
        also = functools.partial(
            self._jobs.chunk_done_in,
            job_id=job.job_id or "",
            chunk=job.chunk,
            vectors=vectors,
            completed=completed,
            failed=failed,
            prompt_tokens=prompt_tokens,
            expires_at_s=job.deadline_ms // 1000,
            error=error,
        )
        await self._chunk_finisher.submit(FinishedJob(arq_job_id, None, None, len(job.inputs), also=also))

    async def _embed(self, job: EmbedJob, *, urgent: bool = True, deadline_ms: int | None = None) -> EmbedResult:
        """``deadline_ms``: past it, a job still waiting for its model to load or for a batch fails with a timeout;
        one already in a running batch finishes with it."""
        timeout_s = None if deadline_ms is None else (deadline_ms - now_ms()) / 1000
        model = await self.registry.get(job.model, timeout_s)
        encoder = model.encoder
        if job.dimensions is not None and not 0 < job.dimensions <= encoder.dimension:
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"dimensions must be between 1 and {encoder.dimension} for this model",
                "dimensions",
            )
        if sum(map(len, job.inputs)) < _INLINE_TOKENIZE_CHARS:
            sequences = _model_inputs(encoder, job)
        else:
            sequences = await asyncio.to_thread(_model_inputs, encoder, job)
        tokens = sum(map(len, sequences))
        if tokens > self._max_tokens:
            message = f"this request has {tokens} tokens; at most {self._max_tokens} are allowed in one request"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "input")
        encoded = await model.batcher.submit(sequences, urgent=urgent, deadline_ms=deadline_ms)
        vectors = encoded.vectors
        if job.dimensions is not None and job.dimensions < vectors.shape[1]:
            vectors = vectors[:, : job.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        stats = encoded.stats
        if stats.batch_size > self.largest_batch[0]:
            self.largest_batch = (stats.batch_size, stats.batch_requests)
        return EmbedResult(
            request_id=job.request_id,
            vectors=np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
            count=vectors.shape[0],
            dim=vectors.shape[1],
            prompt_tokens=sum(len(s) for s in sequences) - len(sequences) * encoder.special_token_count,
            worker_id=self.worker_id,
            inference_ms=stats.inference_ms,
            batch_size=stats.batch_size,
            batch_requests=stats.batch_requests,
        )

    def _error(self, job: EmbedJob, kind: ErrorKind, message: str, param: str | None = None) -> EmbedResult:
        return EmbedResult(job.request_id, error=EmbedError(kind, message, param), worker_id=self.worker_id)

    async def _publish(self, job_id: str, job: EmbedJob, result: EmbedResult) -> None:
        await self._finisher.submit(FinishedJob(job_id, job.reply_to, encode_result(result), len(job.inputs)))

    async def _finish(self, arq: ArqBatch, jobs: list[FinishedJob]) -> list[None]:
        await arq.finish(jobs, REPLY_TTL_S)
        return [None] * len(jobs)

    async def _reject_undecodable(self, job_id: str, message: bytes, exc: ProtocolError) -> None:
        """Answer a job we cannot read, if it at least says where to answer; never crash on it."""
        log.error("undecodable job %s: %s", job_id, exc.message)
        reply_to = reply = None
        with contextlib.suppress(Exception):
            fields = msgpack.unpackb(message, raw=False)
            error = EmbedError(ErrorKind.INTERNAL, "the worker could not decode this job")
            reply = encode_result(EmbedResult(str(fields["request_id"]), error=error))
            reply_to = str(fields["reply_to"])
        await self._finisher.submit(FinishedJob(job_id, reply_to, reply, 0))


def _model_inputs(encoder: Encoder, job: EmbedJob) -> list[list[int]]:
    """Token ids with special tokens, cut or refused per ``job.truncate``. Runs in a thread: tokenizing is CPU work."""
    if job.input_kind == "text":
        token_ids: Sequence[list[int]] = encoder.tokenize(job.inputs)
    else:
        encoder.check_token_ids(job.inputs)
        token_ids = job.inputs
    return [encoder.prepare(list(ids), truncate=job.truncate, param="input") for ids in token_ids]
