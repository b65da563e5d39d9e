"""The life of a job on the sync queue in a worker: decoded, embedded (``EmbedTask``), scored (``RerankTask``) or
tokenized (``TokenizeTask``, ``DecodeTask``: the model's tokenizer alone, no batch), answered with a ``TaskReply`` on
the API's reply list.

A job's own failure never raises: it is answered with its error, and work that was answered is not run again. Only
a failure to push answers or end entries (Redis) reaches the caller, and leaves the entry to run again when its lease
lapses. Jobs answered together are finished together
(``shared.coalesce``): one round trip ends their arq jobs, pushes their replies and releases their texts. A queue
entry that carries several requests (``shared.job_queue``) runs them at once; each is answered when it is done, and
the entry ends when all are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import msgpack
import orjson

from shared import tracing
from shared.clock import now_ms
from shared.coalesce import Coalescer
from shared.errors import ErrorKind, ProtocolError, ServiceError
from shared.job_queue import FinishedJob, JobQueue
from shared.openai_json import data_array
from shared.protocol import (
    DecodeTask,
    EmbedTask,
    RerankTask,
    SparseEmbedTask,
    TaskError,
    TaskReply,
    TokenEmbedTask,
    TokenizeTask,
    decode_sync_task,
    encode_reply,
)
from shared.sparse import sparse_data_array, tei_sparse_body
from worker import metrics
from worker.dead_letter import DeadLetters
from worker.multivector_pipeline import MultiVectorPipeline, render
from worker.pipeline import EmbeddingPipeline
from worker.reranking import RerankPipeline
from worker.sparse_pipeline import SparsePipeline
from worker.tokenizing import Tokenizing

log = logging.getLogger(__name__)

#: what the sync queue carries, and the name of each task's span
SyncJob = EmbedTask | RerankTask | TokenizeTask | DecodeTask | TokenEmbedTask
_TASK_NAMES: dict[type[SyncJob], str] = {
    EmbedTask: "embed",
    SparseEmbedTask: "embed_sparse",
    RerankTask: "rerank",
    TokenizeTask: "tokenize",
    DecodeTask: "decode",
    TokenEmbedTask: "token_embed",
}


class SyncJobs:
    def __init__(
        self,
        pipeline: EmbeddingPipeline,
        reranking: RerankPipeline,
        queue: JobQueue,
        dead_letters: DeadLetters,
        *,
        max_attempts: int,
        tokenizing: Tokenizing | None = None,
        multivector: MultiVectorPipeline | None = None,
        sparse: SparsePipeline | None = None,
    ) -> None:
        """Each job is counted once, as it ends (``metrics.count_job``; one that cannot be read, by
        ``DeadLetters``). ``tokenizing``: tokenize and decode tasks (default: on the pipeline's models)."""
        self._pipeline = pipeline
        self._reranking = reranking
        self._tokenizing = tokenizing or Tokenizing(pipeline.registry)
        #: multi-vector models: token vectors, and their late-interaction rerank
        self._multivector = multivector or MultiVectorPipeline(pipeline.registry)
        #: sparse models: ``/embed_sparse``, and embed tasks for them
        self._sparse = sparse or SparsePipeline(pipeline.registry)
        self._queue = queue
        self._dead_letters = dead_letters
        self._max_attempts = max_attempts
        self._finish: Coalescer[FinishedJob, None] = Coalescer(self._finish_many, "finish")

    async def handle_entry(self, queue_id: str, messages: Sequence[bytes], attempt: int = 1) -> None:
        """Run a queue entry's jobs at once, answer each when it is done, and end the entry when all are."""
        if len(messages) == 1:
            await self.handle(queue_id, messages[0], attempt)
            return
        # every job runs to its end even if one fails, so none outlives the entry's lease; one that failed leaves the
        # entry unended, for its lease to lapse and the entry to run again
        outcomes = await asyncio.gather(
            *(self._handle(queue_id, message, attempt, ends=False) for message in messages), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        await self._finish.add(FinishedJob(queue_id))

    async def handle(self, queue_id: str, message: bytes, attempt: int = 1) -> None:
        """Run one job and answer it, ending its queue entry. ``attempt`` counts its runs: more than one means a
        worker died holding it."""
        await self._handle(queue_id, message, attempt, ends=True)

    async def _handle(self, queue_id: str, message: bytes, attempt: int, *, ends: bool) -> None:
        """One job, answered; ``ends``: its answer ends the entry (its only job)."""
        entry = queue_id if ends else None
        try:
            job = decode_sync_task(message)
        except ProtocolError as exc:
            await self._reject_undecodable(queue_id, message, exc, entry)
            return
        if now_ms() > job.deadline_ms:
            log.info("job %s expired before it started; skipped", job.request_id)
            metrics.count_job("expired")
            if ends:
                await self._finish.add(FinishedJob(queue_id))
            return
        if attempt > self._max_attempts:
            log.error("job %s was attempted %d times; giving up", job.request_id, attempt - 1)
            metrics.count_job("abandoned")
            reason = f"processing this request failed {attempt - 1} times; it was abandoned"
            await self._answer(entry, job, _error_reply(job, ErrorKind.INTERNAL, reason))
            return
        queue_ms = float(now_ms() - job.enqueued_ms)
        metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, queue_ms) / 1000)
        task = _TASK_NAMES[type(job)]
        attributes = {"embeddings.request_id": job.request_id, "embeddings.model": job.model}
        # the job's span ends with its reply ready, before the push: the API's span, ended by the reply, holds it
        with tracing.continued(job.trace_context, task, queued_since_ms=job.enqueued_ms, attributes=attributes):
            reply = await self._reply(job, queue_ms)
            if reply.error is not None:
                tracing.failed(reply.error.kind.value, reply.error.message)
        await self._answer(entry, job, reply)
        metrics.count_job("answered")
        if reply.error is not None:
            metrics.ERRORS.labels(reply.error.kind.value).inc()

    async def _reply(self, job: SyncJob, queue_ms: float) -> TaskReply:
        """The job's answer: its result, or the error that stopped it."""
        try:
            return await self._run(job, queue_ms)
        except ServiceError as exc:
            return _error_reply(job, exc.kind, exc.message, exc.param, queue_ms)
        except TimeoutError:
            reason = "the request's deadline passed before it was encoded"
            return _error_reply(job, ErrorKind.TIMEOUT, reason, queue_ms=queue_ms)
        except Exception:
            log.exception("job %s failed", job.request_id)
            reason = "the worker failed to process this request"
            return _error_reply(job, ErrorKind.INTERNAL, reason, queue_ms=queue_ms)

    async def _run(self, job: SyncJob, queue_ms: float) -> TaskReply:
        if isinstance(job, TokenizeTask | DecodeTask):
            return await self._tokenize(job, queue_ms)
        if isinstance(job, TokenEmbedTask):
            token_vectors = await self._multivector.token_embed(job, deadline_ms=job.deadline_ms)
            data = render(token_vectors.vectors, job.encoding_format, job.layout)
            tokens, stats = token_vectors.tokens, token_vectors.stats
        elif isinstance(job, RerankTask):
            late = await self._multivector.serves(job.model, job.deadline_ms)
            reranking = self._multivector if late else self._reranking
            ranked = await reranking.rerank(job, deadline_ms=job.deadline_ms)
            data = orjson.dumps(ranked.scores, option=orjson.OPT_SERIALIZE_NUMPY)
            tokens, stats = ranked.tokens, ranked.stats
        elif isinstance(job, SparseEmbedTask) or await self._sparse.serves(job, job.deadline_ms):
            sparse = await self._sparse.embed_sparse(job, deadline_ms=job.deadline_ms)
            tei = isinstance(job, SparseEmbedTask)
            data = tei_sparse_body(sparse.rows) if tei else sparse_data_array(sparse.rows)
            tokens, stats = sparse.prompt_tokens, sparse.stats
        else:
            embedded = await self._pipeline.embed(job, deadline_ms=job.deadline_ms)
            data = data_array(embedded.vectors, job.encoding_format, job.output_dtype)
            tokens, stats = embedded.prompt_tokens, embedded.stats
        return TaskReply(
            job.request_id,
            data=data,
            prompt_tokens=tokens,
            queue_ms=queue_ms,
            inference_ms=stats.inference_ms,
            batch_size=stats.batch_size,
            batch_requests=stats.batch_requests,
        )

    async def _tokenize(self, job: TokenizeTask | DecodeTask, queue_ms: float) -> TaskReply:
        """A tokenize or decode task: the model's tokenizer alone, no batch (``worker.tokenizing``)."""
        started = time.perf_counter()
        tokens = 0
        if isinstance(job, TokenizeTask):
            tokenized = await self._tokenizing.tokenize(job, deadline_ms=job.deadline_ms)
            data, tokens = tokenized.data, tokenized.tokens
        else:
            data = await self._tokenizing.decode(job, deadline_ms=job.deadline_ms)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return TaskReply(job.request_id, data=data, prompt_tokens=tokens, queue_ms=queue_ms, inference_ms=elapsed_ms)

    async def _answer(self, entry: str | None, job: SyncJob, reply: TaskReply) -> None:
        """Push the reply, ending ``entry`` with it (None: the entry ends apart)."""
        await self._finish.add(FinishedJob(entry, job.reply_to, encode_reply(reply)))

    async def _finish_many(self, batch: list[tuple[FinishedJob, asyncio.Future[None]]]) -> None:
        await self._queue.finish([finished for finished, _ in batch])
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _reject_undecodable(self, queue_id: str, message: bytes, exc: ProtocolError, entry: str | None) -> None:
        """Move aside a job we cannot read (of entry ``queue_id``) and answer it, if it at least says where to answer;
        never crash on it. ``entry``: the entry its answer ends (None: the entry ends apart)."""
        await self._dead_letters.keep(queue_id, message, exc)
        reply_to = reply = None
        with contextlib.suppress(Exception):
            fields = msgpack.unpackb(message, raw=False)
            error = TaskError(ErrorKind.INTERNAL, "the worker could not decode this job")
            reply = encode_reply(TaskReply(str(fields["request_id"]), error=error))
            reply_to = str(fields["reply_to"])
        await self._finish.add(FinishedJob(entry, reply_to, reply))


def _error_reply(
    job: SyncJob, kind: ErrorKind, message: str, param: str | None = None, queue_ms: float = 0.0
) -> TaskReply:
    return TaskReply(job.request_id, error=TaskError(kind, message, param), queue_ms=queue_ms)
